"""Fingerprints of known capture tools — evidence, never the verdict.

A name is trivial to change, so these only add context to a finding that the
hooks themselves already justify ("this looks like eCapture"), and their absence
clears nothing.
"""

from __future__ import annotations

import os

# Map names eCapture's modules create (pkg/event_processor and the kern/*.h sources).
ECAPTURE_MAPS = frozenset(
    {
        "events",
        "mastersecret_events",
        "mastersecret_go_events",
        "skb_events",
        "connect_events",
        "bash_events",
        "zsh_events",
        "mysqld_events",
        "postgres_events",
        "gnutls_events",
        "nspr_events",
        "tls_events",
        "ssl_st_fd",
        "network_map",
        "active_ssl_read_args_map",
        "active_ssl_write_args_map",
        "data_buffer_heap",
    }
)
# Program names of bcc's sslsniff and of eCapture's probes (as in their sources).
PROGRAM_HINTS = {
    "probe_SSL_rw_enter": "bcc sslsniff",
    "probe_SSL_read_exit": "bcc sslsniff",
    "probe_SSL_write_exit": "bcc sslsniff",
    "probe_SSL_do_handshake_enter": "bcc sslsniff",
    "probe_entry_SSL": "eCapture",
    "probe_ret_SSL_read": "eCapture",
    "probe_ret_SSL_write": "eCapture",
    "probe_entry_SSL_write": "eCapture",
    "probe_entry_SSL_read": "eCapture",
    "probe_SSL_set_fd": "eCapture",
    "gotls_write_register": "eCapture gotls",
    "gotls_read_register": "eCapture gotls",
    "uretprobe_bash_readline": "eCapture bash",
}
EXECUTABLES = {
    "bpftrace": "bpftrace",
    "ecapture": "eCapture",
    "sslsniff-bpfcc": "bcc sslsniff",
    "sslsniff": "bcc sslsniff",
    "bpftool": "bpftool",
    "perf": "perf",
}


def evidence(
    exe: str | None, cmdline: list[str], prog_names: list[str], map_names: list[str]
) -> list[str]:
    """Lines of evidence naming known tools (possibly empty)."""
    out: list[str] = []
    base = os.path.basename(exe or "")
    if base in EXECUTABLES:
        out.append(f"executable {base} is {EXECUTABLES[base]}")
    for arg in cmdline[:3]:
        name = os.path.basename(arg)
        if name in EXECUTABLES and name != base:
            out.append(f"command line runs {name} ({EXECUTABLES[name]})")
            break
    # The kernel keeps 15 characters of a name; BTF (when present) the whole of it.
    for name in prog_names:
        for hint, tool in PROGRAM_HINTS.items():
            if name in (hint, hint[:15]):
                out.append(f"program name {name} matches {tool}")
                break
    truncated = {n[:15]: n for n in ECAPTURE_MAPS}
    hits = sorted(
        {truncated.get(n, n) for n in map_names if n in ECAPTURE_MAPS or n in truncated}
        - {"events"}
    )
    if hits:
        out.append(f"map names {', '.join(hits)} match eCapture")
    return out
