"""ecap test suite: real kernel, real processes, as root."""
