"""ecap-audit: authorized capture of TLS plaintext (and shell / database activity)."""
