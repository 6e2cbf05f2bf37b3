"""What the kernel's audit subsystem records, asked over netlink through libaudit.

The scan needs three answers — is audit on (and who receives it), do the loaded
rules record ``bpf`` and ``perf_event_open``, is tracefs's ``uprobe_events``
watched — and used to get them by running ``auditctl -s`` and ``auditctl -l``,
which cost two process launches per scan. Debian's ``audit`` binding (libaudit)
sends the same AUDIT_GET and AUDIT_LIST_RULES requests in-process. The binding
exposes a rule only as a pointer, so its ``struct audit_rule_data`` is read as
bytes (layout from ``include/uapi/linux/audit.h``) and decoded by
:func:`rule_coverage`, which the unit tests feed recorded rules.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

# include/uapi/linux/audit.h
_BITMASK_WORDS = 64
_MAX_FIELDS = 64
_RULE_HEADER = struct.Struct(f"<III{_BITMASK_WORDS}I{_MAX_FIELDS}I{_MAX_FIELDS}I{_MAX_FIELDS}II")
_AUDIT_ARCH = 11
_AUDIT_WATCH, _AUDIT_DIR, _AUDIT_EXE, _AUDIT_FILTERKEY = 105, 107, 112, 210
# Fields whose value is a string in the rule's buffer (its length in ``values``).
_STRING_FIELDS = {
    13,
    14,
    15,
    16,
    17,
    19,
    20,
    21,
    22,
    23,
    _AUDIT_WATCH,
    _AUDIT_DIR,
    _AUDIT_EXE,
    _AUDIT_FILTERKEY,
}


@dataclass(frozen=True)
class Rule:
    """The parts of one loaded rule that say what it records."""

    arch: int | None
    syscalls: frozenset[int]
    paths: tuple[str, ...]
    """Watched files and directories (``-w``, ``-F dir=``, ``-F path=``)."""


def parse_rule(raw: bytes) -> Rule:
    """Decode one ``struct audit_rule_data`` (header and string buffer)."""
    words = _RULE_HEADER.unpack_from(raw)
    field_count = words[2]
    mask = words[3 : 3 + _BITMASK_WORDS]
    base = 3 + _BITMASK_WORDS
    fields = words[base : base + _MAX_FIELDS]
    values = words[base + _MAX_FIELDS : base + 2 * _MAX_FIELDS]
    buf = raw[_RULE_HEADER.size :]
    arch, paths, offset = None, [], 0
    for i in range(min(field_count, _MAX_FIELDS)):
        if fields[i] == _AUDIT_ARCH:
            arch = values[i]
        elif fields[i] in _STRING_FIELDS:
            text = buf[offset : offset + values[i]].decode("utf-8", "replace")
            offset += values[i]
            if fields[i] in (_AUDIT_WATCH, _AUDIT_DIR):
                paths.append(text)
    syscalls = frozenset(
        w * 32 + b for w, word in enumerate(mask) if word for b in range(32) if word >> b & 1
    )
    return Rule(arch, syscalls, tuple(paths))


def rule_coverage(rules: list[Rule], *, arch: int, bpf_nr: int, perf_nr: int) -> dict:
    """Whether syscall rules for this architecture record ``bpf``/``perf_event_open``,
    and whether a watch covers tracefs. Watch rules carry a full syscall mask of
    their own, so they count only as watches."""
    bpf = perf = watch = False
    for rule in rules:
        if rule.paths:
            watch = watch or any("tracing" in p for p in rule.paths)
            continue
        if rule.arch not in (None, arch):
            continue
        bpf = bpf or bpf_nr in rule.syscalls
        perf = perf or perf_nr in rule.syscalls
    return {"rules_bpf": bpf, "rules_perf_event_open": perf, "rules_tracefs_watch": watch}


def audit_state() -> dict:
    """``enabled``, ``auditd_pid`` and the rule coverage; ``error`` when it cannot tell."""
    state: dict = {
        "enabled": None,
        "auditd_pid": None,
        "rules_bpf": None,
        "rules_perf_event_open": None,
        "rules_tracefs_watch": None,
    }
    try:
        import audit
    except ImportError:
        state["error"] = "python3-audit (libaudit) not installed"
        return state
    fd = audit.audit_open()
    if fd < 0:
        state["error"] = "audit netlink unavailable (kernel audit off, or not root)"
        return state
    try:
        if audit.audit_request_status(fd) <= 0:
            state["error"] = "audit status request refused (needs CAP_AUDIT_CONTROL)"
            return state
        reply = audit.audit_reply()
        if (
            audit.audit_get_reply(fd, reply, audit.GET_REPLY_BLOCKING, 0) > 0
            and reply.type == audit.AUDIT_GET
        ):
            state["enabled"] = int(reply.status.enabled)
            state["auditd_pid"] = int(reply.status.pid) or None
        rules = _list_rules(audit, fd)
    finally:
        audit.audit_close(fd)
    if rules is None:
        state["error"] = "audit rule list refused (needs CAP_AUDIT_CONTROL)"
        return state
    machine = audit.audit_detect_machine()
    state.update(
        rule_coverage(
            rules,
            arch=_native_arch(),
            bpf_nr=audit.audit_name_to_syscall("bpf", machine),
            perf_nr=audit.audit_name_to_syscall("perf_event_open", machine),
        )
    )
    return state


def _list_rules(audit, fd: int) -> list[Rule] | None:
    if audit.audit_request_rules_list_data(fd) <= 0:
        return None
    rules = []
    while True:
        reply = audit.audit_reply()
        if audit.audit_get_reply(fd, reply, audit.GET_REPLY_BLOCKING, 0) <= 0:
            return rules
        if reply.type != audit.AUDIT_LIST_RULES:  # NLMSG_DONE or an error ends the list
            return rules
        address = int(reply.ruledata.this)
        header = ctypes.string_at(address, _RULE_HEADER.size)
        buflen = _RULE_HEADER.unpack(header)[-1]
        rules.append(parse_rule(ctypes.string_at(address, _RULE_HEADER.size + buflen)))


def _native_arch() -> int:
    """AUDIT_ARCH_* of this machine (what ``-F arch=b64`` means here)."""
    return {"x86_64": 0xC000003E, "aarch64": 0xC00000B7, "riscv64": 0xC00000F3}.get(
        os.uname().machine, 0
    )
