"""Authorization: Ed25519 keys, requests, signed tokens, verification policy, revocation."""
