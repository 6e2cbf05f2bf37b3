"""Findings about programs rather than hooks: dormant, unheld, and packet taps.

A probe finding needs an attachment the scan can see. These cover the programs
that matter without one:

* **pinned, nothing attached** — a loader pinned its program in bpffs and exited;
  anyone who can open the pin can attach it again. With sniffing capabilities
  it is a dormant sniffer (high), with tampering ones critical, else low;
* **unheld** — a loaded tracing program that no process holds, no pin names and
  no link carries: its references live where the scan cannot look (fds in flight
  in a unix socket's queue, a perf event owned by the kernel). At least high,
  with whether it is firing (its run count read twice) and its load record;
* **packet taps** — TC, XDP and socket-filter programs that read packets and can
  copy them out, with the interface and the processes holding them.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable

from ecap import remediation
from ecap.detect import capabilities as capmod
from ecap.detect import owners
from ecap.detect.findings import Inventory, _finding_id, make_finding, program_evidence
from ecap.detect.judge import dormant_program, unheld_program
from ecap.detect.model import Program

ROGUE = [
    remediation.RESPOND_ROGUE_SNIFFER,
    remediation.AUDITD_BPF_SYSCALLS,
    remediation.SECCOMP_DENY_BPF,
    remediation.CONTAINER_CAPABILITIES,
]
_PACKET_LINKS = ("tcx", "xdp", "netkit")


def _base(*, prog: Program | None, prog_ids: list[int], remedy: list[str], **fields) -> dict:
    """A finding about one program (its capabilities carried along)."""
    caps = list(prog.capabilities) if prog and prog.capabilities is not None else None
    return make_finding(programs=prog_ids, capabilities=caps, remediation=remedy, **fields)


def _label(prog: Program | None, prog_id: int) -> str:
    return f"{prog.name or prog_id} (id {prog_id})" if prog else f"id {prog_id}"


def pinned_program_findings(inv: Inventory, hooked_progs: set[int]) -> list[dict]:
    """Programs kept alive only by a pin, with no attachment we could see."""
    out = []
    by_prog: dict[int, list] = {}
    for pin in inv.pins:
        if pin.kind == "prog" and pin.obj_id not in hooked_progs:
            by_prog.setdefault(pin.obj_id, []).append(pin)
    for prog_id, pins in by_prog.items():
        if inv.holders_of("prog", prog_id):
            continue
        prog = inv.programs.get(prog_id)
        caps = prog.capabilities if prog else None
        severity, kind = dormant_program(caps)
        paths = [p.path for p in pins]
        label = _label(prog, prog_id)
        if kind == "sniffer":
            title = (
                f"Dormant sniffer: program {label} is pinned at {paths[0]} and held by no process"
            )
            why = (
                "a pinned program survives its loader; this one can read user memory and "
                "ship it out, and anyone who can open the pin can attach it again"
            )
        elif kind == "tampering":
            title = f"Pinned program {label} can tamper with the processes it hooks"
            why = "a pinned program that writes user memory can be attached again at any time"
        else:
            title = f"Program {label} is pinned at {paths[0]} and held by no process"
            why = "pins are how a loader leaves probes behind after it exits"
        evidence = [f"prog {prog_id} pinned at {p.path} ({p.mount_ns})" for p in pins]
        evidence += program_evidence(inv, [prog_id])
        evidence += [
            f"inspect: bpftool prog show pinned {paths[0]}; "
            f"bpftool prog dump xlated pinned {paths[0]}",
            "remove: " + "; ".join(f"rm {p}" for p in paths) + " (in its mount namespace)",
        ]
        out.append(
            _base(
                fid=_finding_id("pinned-program", paths[0], prog_id),
                severity=severity,
                category="pinned-program",
                title=title,
                summary=f"{capmod.describe(caps)}; pinned at {', '.join(paths)}",
                owner={
                    "pid": None,
                    "kind": "pin",
                    "pinned_at": paths[0],
                    "pins": paths,
                    "mount_ns": pins[0].mount_ns,
                    "created_by_uid": [prog.created_by_uid] if prog else [],
                },
                prog=prog,
                prog_ids=[prog_id],
                evidence=evidence,
                why=why,
                remedy=ROGUE if severity in ("high", "critical") else ROGUE[1:3],
            )
        )
    return out


def _carried(inv: Inventory) -> set[int]:
    """Programs something visible keeps alive: an fd, a pin, a link, a program array."""
    out = {h.obj_id if h.kind == "prog" else h.prog_id for h in inv.holders}
    out |= {lk.prog_id for lk in inv.links.values()}
    out |= {p.obj_id for p in inv.pins if p.kind == "prog"}
    out |= {p.prog_id for p in inv.probes if p.prog_id}
    for m in inv.maps.values():
        out.update(m.prog_ids)
    return out


def unheld_candidates(inv: Inventory) -> list[int]:
    """Loaded tracing programs no holder, pin, link or program array accounts for."""
    carried = _carried(inv)
    return sorted(
        p.id
        for p in inv.programs.values()
        if p.type in capmod.TRACING_PROGRAM_TYPES and p.source == "bpf" and p.id not in carried
    )


def unheld_program_findings(
    inv: Inventory,
    prog_ids: Iterable[int],
    *,
    firing: dict[int, tuple[int, int, float]] | None = None,
    loads: dict[int, dict] | None = None,
) -> list[dict]:
    """One finding per unheld tracing program.

    ``firing``: prog id → (run count before, after, seconds between), read with
    run-time statistics enabled; ``loads``: prog id → its audit LOAD record.
    """
    firing, loads = firing or {}, loads or {}
    out = []
    for prog_id in prog_ids:
        prog = inv.programs.get(prog_id)
        caps = prog.capabilities if prog else None
        label = _label(prog, prog_id)
        evidence = [
            f"prog {prog_id} ({prog.type if prog else '?'}) is loaded, but no process holds "
            "it, no bpffs pin names it and no BPF link carries it"
        ]
        evidence += program_evidence(inv, [prog_id])
        if prog_id in firing:
            before, after, window = firing[prog_id]
            if after > before:
                evidence.append(
                    f"firing: run count went from {before} to {after} in {window:.2f} s"
                )
            else:
                evidence.append(f"not seen firing: run count stayed {after} for {window:.2f} s")
        record = loads.get(prog_id)
        if record:
            evidence.append(
                f"audit: loaded by {record.get('exe')} (pid {record.get('pid')}, comm "
                f"{record.get('comm')}, auid {record.get('auid')})"
            )
        evidence.append(
            "its fds may be in flight in a unix socket's queue (sent with SCM_RIGHTS and "
            "never received): look for processes holding unix sockets with queued data "
            "(ss -xp), and inspect with: bpftool prog show id "
            f"{prog_id}; bpftool prog dump xlated id {prog_id}"
        )
        sniffing = capmod.is_sniffer(caps)
        what = "sniffer" if sniffing else "tracing program"
        out.append(
            _base(
                fid=_finding_id("unheld-program", prog_id, prog.tag if prog else ""),
                severity=unheld_program(caps),
                category="unheld-program",
                title=f"Unheld {what}: program {label} is held through references the "
                "scan cannot see",
                summary=capmod.describe(caps),
                owner={
                    "pid": None,
                    "kind": "kernel",
                    "created_by_uid": [prog.created_by_uid] if prog else [],
                    "loaded_by": record,
                },
                prog=prog,
                prog_ids=[prog_id],
                evidence=evidence,
                why=(
                    "a program no process holds is still attached and running if something "
                    "keeps its perf event or link alive; hiding the holder is how a sniffer "
                    "avoids being tied to a process"
                ),
                remedy=ROGUE,
            )
        )
    return out


def _ifname(ifindex: int) -> str:
    with contextlib.suppress(OSError):
        return socket.if_indextoname(ifindex)
    return f"ifindex {ifindex}"


def _packet_socket_interfaces(pid: int) -> list[str]:
    """Interfaces of the packet sockets ``pid`` holds (its /proc/PID/net/packet,
    matched by socket inode): where a socket filter taps."""
    try:
        with open(f"/proc/{pid}/net/packet") as f:
            rows = [line.split() for line in f.read().splitlines()[1:]]
        by_inode = {r[8]: int(r[4]) for r in rows if len(r) >= 9 and r[4].isdigit()}
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    out = []
    for name in names:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            inode = target[len("socket:[") : -1] if target.startswith("socket:[") else None
            if by_inode.get(inode):
                out.append(_ifname(by_inode[inode]))
    return out


def packet_tap_findings(inv: Inventory) -> list[dict]:
    """Packet programs that read packet data and can copy it to user space."""
    attached: dict[int, list[str]] = {}
    link_of: dict[int, list[int]] = {}
    for lk in inv.links.values():
        link_of.setdefault(lk.prog_id, []).append(lk.id)
        if lk.type in _PACKET_LINKS and lk.info.get("ifindex"):
            attached.setdefault(lk.prog_id, []).append(
                f"{_ifname(int(lk.info['ifindex']))} ({lk.type})"
            )
    out = []
    for prog in inv.programs.values():
        if prog.type not in capmod.PACKET_PROGRAM_TYPES or not capmod.is_packet_tap(
            prog.capabilities
        ):
            continue
        pids = set(inv.holders_of("prog", prog.id))
        for link_id in link_of.get(prog.id, []):
            pids.update(inv.holders_of("link", link_id))
        where = attached.get(prog.id)
        if where:
            place = "on " + ", ".join(where)
        elif prog.type == "socket_filter":
            ifaces = sorted({i for p in pids for i in _packet_socket_interfaces(p)})
            where = [f"{i} (packet socket)" for i in ifaces] or None
            holders_txt = ", ".join(f"pid {p}" for p in sorted(pids)) or "an unknown process"
            place = (
                f"on {', '.join(where)} through a socket of {holders_txt}"
                if where
                else f"on the sockets of {holders_txt}"
            )
        else:
            place = "attached without a BPF link (netlink tc/XDP) or not attached"
        holders = [owners.describe(p, hash_exe=False) for p in sorted(pids)]
        holders = [{**h, "kind": "process"} for h in holders if h]
        evidence = [f"prog {prog.id} ({prog.type}) {place}"]
        evidence += program_evidence(inv, [prog.id])
        evidence += [f"held by pid {h['pid']} ({h.get('comm')}, {h.get('exe')})" for h in holders]
        out.append(
            _base(
                fid=_finding_id("packet-tap", prog.id, prog.tag),
                severity="high",
                category="packet-tap",
                title=f"Packet tap: program {_label(prog, prog.id)} copies packet data to user "
                f"space {place}",
                summary=capmod.describe(prog.capabilities),
                owner=holders[0] if holders else {"pid": None, "kind": "kernel"},
                prog=prog,
                prog_ids=[prog.id],
                evidence=evidence,
                why=(
                    "a packet program that can copy packets out sees every plaintext protocol "
                    "on the interface (HTTP, DNS, SMTP, database wire protocols without TLS)"
                ),
                remedy=ROGUE,
            )
        )
        out[-1]["interfaces"] = where or []
        if holders:
            out[-1]["destinations"] = owners.destinations(holders[0]["pid"])
    return out
