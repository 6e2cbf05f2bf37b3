"""ecap-harden: generate and validate policies that close eBPF capture exposure."""
