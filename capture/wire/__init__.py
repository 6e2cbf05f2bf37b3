"""The wire side of a capture: the authorized connections' packets, TLS read from
them, and the proof of every secret a library reported (``--format keylog``,
``pcapng``), plus the synthetic packets of ``pcapng --plaintext``.

Module-independent: a module only reports secrets (``CaptureModule.secrets``);
what they decrypt is decided here, from the packets.
"""
