"""ecap — authorized eBPF plaintext auditing, sniffer detection and hardening.

This package is the shared core: code that capture, detect and harden all need
(errors and exit codes, paths, /proc readers, ELF symbol resolution, host facts,
authorization tokens, the journal and the live-session registry). The three tools
live in the subpackages ``ecap.capture``, ``ecap.detect`` and ``ecap.harden``.
"""

__version__ = "0.1.0"
