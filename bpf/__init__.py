"""Resource package: the eBPF C sources that bcc compiles at run time."""
