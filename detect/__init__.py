"""ecap-detect: find eBPF programs that hook plaintext, their owners and victims."""
