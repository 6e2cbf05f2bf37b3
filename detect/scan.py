"""One scan of this host: collect, reason, and return the ``ecap.scan/2`` document.

Collection is split by object kind like bpftool (programs, maps, links, fd
holders and perf attachments, tracefs probes, pins); each step that cannot see
something says so in ``limitations`` instead of failing. Without CAP_SYS_ADMIN
the id walks and BPF_TASK_FD_QUERY are refused, and the inventory is rebuilt
from what ``/proc/*/fdinfo`` shows.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from ecap import caps, host
from ecap import selinux as sel
from ecap.detect import (
    audit_history,
    bpfsys,
    btf,
    capabilities,
    findings,
    holders,
    host_findings,
    links,
    maps,
    owners,
    pins,
    posture,
    program_findings,
    programs,
    sessions,
    tracefs,
    watchers,
)
from ecap.detect.document import SCHEMA
from ecap.detect.kernel_walk import KernelWalker, KernelWalkUnavailable
from ecap.detect.model import Link, Map, Program, to_dict
from ecap.errors import Error, UsageError
from ecap.text import json_safe_str

FIRING_WINDOW = 0.3
"""Seconds between the two run-count reads of an unheld program (only paid when
there is one)."""


@dataclass(frozen=True)
class ScanOptions:
    """What to read besides the live kernel state."""

    audit_log: Path | None = None
    """AUDIT_BPF history source; default ``/var/log/audit/audit.log`` when present."""
    selinux_policy: Path | None = None
    """A binary SELinux policy to analyse; by default only the loaded one, when enabled."""
    use_bpf: bool = True
    """False forces degraded mode (what an unprivileged scan sees), for comparison."""
    walk: str = "auto"
    """How to find fd holders and victims: ``kernel`` (BPF iterators), ``procfs``
    (``/proc`` reads), or ``auto``: the kernel walk from KERNEL_WALK_MIN_PROCESSES
    processes on, where it is cheaper than the ``/proc`` reads it replaces."""
    audit_history: bool = True
    """False skips the audit-log history (``ecap-detect watch`` sees loads as they
    happen, and rescans too often to re-read a large audit log each time)."""


WALKS = ("auto", "kernel", "procfs")
KERNEL_WALK_MIN_PROCESSES = 200
"""Loading the iterators costs a fixed ~10 ms; the ``/proc`` walk costs ~25 µs per
process with a few fds, ~95 µs with 16 (fd table, fdinfo, mount namespace, and a
``maps`` read once something is hooked). Below a couple of hundred processes
``/proc`` is the cheaper walk (bench/bench_detect.py measures both)."""


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


def _from_fdinfo(fdinfo: dict) -> tuple[list[Program], list[Map], list[Link]]:
    """Degraded inventory: fdinfo gives ids, types, tags, sizes — no names."""
    progs, mps, lks = [], [], []
    for (kind, obj_id), info in fdinfo.items():
        if kind == "prog":
            ptype = info.get("prog_type", "0")
            progs.append(
                Program(
                    id=obj_id,
                    type=programs.type_name(int(ptype)) if ptype.isdigit() else ptype,
                    name="",
                    tag=info.get("prog_tag", ""),
                    source="fdinfo",
                    run_cnt=int(info["run_cnt"]) if info.get("run_cnt", "").isdigit() else None,
                )
            )
        elif kind == "map":
            mtype = info.get("map_type", "0")
            tname = maps.type_name(int(mtype)) if mtype.isdigit() else mtype
            mps.append(
                Map(
                    id=obj_id,
                    type=tname,
                    name="",
                    key_size=int(info.get("key_size", "0") or 0),
                    value_size=int(info.get("value_size", "0") or 0),
                    max_entries=int(info.get("max_entries", "0") or 0),
                    event_output=tname in maps.EVENT_OUTPUT_TYPES,
                    source="fdinfo",
                )
            )
        elif kind == "link":
            lks.append(
                Link(
                    id=obj_id,
                    type=info.get("link_type", "?"),
                    prog_id=int(info.get("prog_id", "0") or 0),
                )
            )
    return progs, mps, lks


def _clean(value):
    """Make every string JSON-encodable (surrogate-escaped bytes become \\xNN)."""
    if isinstance(value, str):
        return json_safe_str(value)
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass
class _Objects:
    """The id walks' result, taken before anything of ours is loaded."""

    programs: list[Program]
    maps: list[Map]
    links: list[Link]
    degraded: bool


def _list_objects(options: ScanOptions) -> _Objects:
    if not options.use_bpf:
        return _Objects([], [], [], degraded=True)
    try:
        map_list = maps.list_maps()
        prog_list = capabilities.assess(programs.list_programs(), {m.id: m for m in map_list})
        return _Objects(prog_list, map_list, links.list_links(), degraded=False)
    except bpfsys.BpfError as exc:
        if exc.errno not in (errno.EPERM, errno.EACCES):
            raise
        return _Objects([], [], [], degraded=True)


def run_scan(options: ScanOptions | None = None) -> dict:
    """Scan the host and return the scan document (see detect/SCHEMA.md)."""
    options = options or ScanOptions()
    started = time.monotonic()
    selinux = None
    if options.selinux_policy is not None:  # an explicit policy that cannot be read is bad input
        selinux = sel.read_state(policy=options.selinux_policy)
        if selinux.exposure is None:
            raise UsageError(
                f"--selinux-policy {options.selinux_policy}: {selinux.note}",
                hint="give a binary SELinux policy such as /etc/selinux/default/policy/policy.33",
            )
    btf.clear_cache()  # BTF ids are reused eventually; names are cached per scan only
    my_caps = caps.effective()
    objects = _list_objects(options)
    # The walker is loaded after the id walks, so its own programs are not inventoried.
    kernel, walk_note = _open_kernel_walker(options, objects.degraded, my_caps)
    with kernel or contextlib.nullcontext():
        doc = _scan(objects, kernel, walk_note, my_caps, options, selinux)
    doc["scanner"]["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
    try:  # almost always nothing to clean: let the C encoder say so in one pass
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return _clean(doc)
    return doc


def _open_kernel_walker(
    options: ScanOptions, degraded: bool, my_caps: set[str]
) -> tuple[KernelWalker | None, str | None]:
    """The in-kernel walker when it is asked for (or pays off) and can load.

    ``walk="kernel"`` that cannot load is an error; ``auto`` falls back to
    ``/proc`` and says why in ``scanner.walk_note``.
    """
    if options.walk not in WALKS:
        raise UsageError(f"walk {options.walk!r} is not one of {', '.join(WALKS)}")
    if options.walk == "procfs":
        return None, None
    if options.walk == "auto":
        processes = sum(1 for name in os.listdir("/proc") if name.isdigit())
        if processes < KERNEL_WALK_MIN_PROCESSES:
            return None, None
    reason = None
    if degraded or "CAP_SYS_ADMIN" not in my_caps:
        reason = "needs CAP_SYS_ADMIN and bpf(2)"
    else:
        try:
            return KernelWalker(), None
        except KernelWalkUnavailable as exc:
            reason = str(exc)
    if options.walk == "kernel":
        raise Error(
            f"kernel walk unavailable: {reason}",
            hint="run 'make setup' as root, or use --walk procfs",
        )
    return None, f"in-kernel walk unavailable ({reason}); walked /proc instead"


def _scan(
    objects: _Objects,
    kernel: KernelWalker | None,
    walk_note: str | None,
    my_caps: set[str],
    options: ScanOptions,
    selinux: sel.State | None = None,
) -> dict:
    """Everything after the id walks; ``kernel`` serves the fd walk and victim search."""
    limitations: list[str] = []
    prog_list, map_list, link_list = objects.programs, objects.maps, objects.links
    degraded = objects.degraded
    walk = holders.walk(query_perf_events=not degraded, kernel=kernel)
    if walk.task_fd_query_denied:
        degraded = True
    if degraded:
        prog_list, map_list, link_list = _from_fdinfo(walk.fdinfo)
        limitations.append(
            "degraded mode (no CAP_SYS_ADMIN): programs, maps and links not held by any "
            "process are invisible; uprobes attached without a BPF link (bcc, bpftrace: "
            "BPF_TASK_FD_QUERY is refused) are not seen, links still show their uprobe "
            "target in fdinfo; program and map names are not available"
        )
    if walk.denied:
        limitations.append(f"{walk.denied} process(es) whose fd table could not be read")

    tracefs_probes, note = tracefs.list_probes()
    if note:
        limitations.append(note)
    pin_list, pin_notes = pins.list_pins(walk.mount_ns or None)
    limitations += pin_notes

    inv = findings.Inventory(
        programs={p.id: p for p in prog_list},
        maps={m.id: m for m in map_list},
        links={lk.id: lk for lk in link_list},
        holders=walk.holders,
        probes=[],
        pins=pin_list,
    )
    inv.probes = findings.merge_probes(walk.probes, findings.link_probes(link_list), tracefs_probes)
    verdicts, session_notes = sessions.evaluate_all(
        held_progs=inv.held_progs(), loaded_progs=set(inv.programs)
    )
    inv.verdicts = verdicts
    limitations += session_notes

    if host.kernel_version_tuple() < (6, 6):
        limitations.append("kernel < 6.6: perf-event links do not report uprobe targets")

    post = posture.collect(selinux)
    history, hnote = (
        audit_history.load_history(options.audit_log, set(inv.programs))
        if options.audit_history
        else (None, None)
    )
    if hnote:
        limitations.append(hnote)

    found = findings.probe_findings(
        inv,
        victims=partial(owners.victims, kernel=kernel),
        kernel_inodes=_kernel_inodes(kernel, inv, limitations),
    )
    if any(p.is_uprobe and p.source == "perf_event" for p in inv.probes):
        limitations.append(
            "the target-process filter of a perf-event uprobe is not exposed by the kernel: "
            "victims are all processes mapping the hooked file (an authorized capture's "
            "token names its targets)"
        )
    hooked_progs = {p.prog_id for p in inv.probes if p.prog_id}
    found += program_findings.pinned_program_findings(inv, hooked_progs)
    unheld = [] if degraded else program_findings.unheld_candidates(inv)
    if unheld:
        found += program_findings.unheld_program_findings(
            inv,
            unheld,
            firing=_firing(unheld, limitations),
            loads=history.live_loads if history is not None else None,
        )
    found += program_findings.packet_tap_findings(inv)
    found += host_findings.stale_session_findings(verdicts)
    found += host_findings.posture_findings(posture.issues(post))
    if history is not None:
        found += host_findings.history_findings(history.transient)
        found += host_findings.denial_findings(history.denials)
    watcher_verdicts = watchers.evaluate(inv)
    ours = watchers.verified_programs(watcher_verdicts)
    found = [f for f in found if not (f["programs"] and set(f["programs"]) <= ours)]
    found = findings.sort_findings(found)

    counts = {s: 0 for s in findings.SEVERITIES}
    for f in found:
        counts[f["severity"]] += 1

    doc = {
        "schema": SCHEMA,
        "generated_at": datetime.now(UTC).isoformat(),
        "tool": {"name": "ecap-detect", "version": _version()},
        "host": {
            "hostname": host.hostname(),
            "machine_id": host.machine_id(),
            "kernel": host.kernel_release(),
            "arch": os.uname().machine,
        },
        "scanner": {
            "pid": os.getpid(),
            "degraded": degraded,
            "capabilities": sorted(c for c in my_caps if c in caps.SNIFFER_RELEVANT),
            "processes": walk.processes,
            "fds": walk.fds,
            "walk": walk.method,
            "walk_note": walk_note,
            "duration_ms": None,
        },
        "posture": post,
        "inventory": {
            "programs": [
                {
                    **to_dict(p),
                    "load_time": _iso(p.load_time),
                    "holders": inv.holders_of("prog", p.id),
                }
                for p in sorted(inv.programs.values(), key=lambda p: p.id)
            ],
            "maps": [
                {**to_dict(m), "holders": inv.holders_of("map", m.id)}
                for m in sorted(inv.maps.values(), key=lambda m: m.id)
            ],
            "links": [
                {**to_dict(lk), "holders": inv.holders_of("link", lk.id)}
                for lk in sorted(inv.links.values(), key=lambda lk: lk.id)
            ],
            "probes": [to_dict(p) for p in inv.probes],
            "pins": [to_dict(p) for p in inv.pins],
            "holders": [to_dict(h) for h in inv.holders],
            "sessions": [
                {
                    "session_id": v.session_id,
                    "status": v.status,
                    "reason": v.reason,
                    "capture_pid": v.capture_pid,
                    "prog_ids": sorted(v.prog_ids),
                    "capture_alive": v.capture_alive,
                    "path": v.path,
                }
                for v in verdicts
            ],
            "history": history.transient if history is not None else None,
            "selinux_denials": [d.as_dict() for d in history.denials]
            if history is not None
            else None,
            "watchers": [
                {
                    "pid": v.pid,
                    "status": v.status,
                    "reason": v.reason,
                    "prog_ids": sorted(v.prog_ids),
                }
                for v in watcher_verdicts
            ],
        },
        "findings": found,
        "limitations": limitations,
        "summary": {"counts": counts, "findings": len(found)},
    }
    return doc


def _firing(prog_ids: list[int], limitations: list[str]) -> dict[int, tuple[int, int, float]]:
    """Run counts of these programs read twice, FIRING_WINDOW apart, with run-time
    statistics enabled only for that window (BPF_ENABLE_STATS: nothing stays on)."""
    try:
        stats_fd = bpfsys.enable_stats()
    except bpfsys.BpfError as exc:
        limitations.append(f"cannot enable BPF run-time statistics ({exc.strerror})")
        return {}
    try:
        before = programs.run_counts(prog_ids)
        started = time.monotonic()
        time.sleep(FIRING_WINDOW)
        after = programs.run_counts(prog_ids)
        window = time.monotonic() - started
    finally:
        os.close(stats_fd)
    return {i: (before[i], after[i], window) for i in prog_ids if i in before and i in after}


def _kernel_inodes(
    kernel: KernelWalker | None, inv: findings.Inventory, limitations: list[str]
) -> dict[tuple[int, int], tuple[int, int]]:
    """(pid, fd) of each perf-event uprobe → the inode the kernel hooked."""
    wanted = {(p.holder_pid, p.fd) for p in inv.probes if p.is_uprobe and p.fd is not None}
    if not wanted:
        return {}
    try:
        if kernel is not None:
            found = kernel.uprobe_inodes()
        else:  # the /proc walk ran; load the iterators for this one question
            with KernelWalker() as walker:
                found = walker.uprobe_inodes()
    except (KernelWalkUnavailable, bpfsys.BpfError) as exc:
        limitations.append(
            f"the inode each uprobe hooked could not be read ({exc}): paths are judged as "
            "they read now"
        )
        return {}
    return {k: v for k, v in found.items() if k in wanted}


def _version() -> str:
    from ecap import __version__

    return __version__
