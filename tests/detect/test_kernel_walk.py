"""The in-kernel walk (BPF iterators) against the /proc walk, on live hooks.

Both walks must report the same holders, probes, findings and victims; the
kernel walk must leave nothing loaded or open, and must never inventory itself.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ecap.detect import holders, kernel_walk, owners, programs
from ecap.detect.scan import ScanOptions, run_scan
from ecap.errors import Error
from tests.conftest import ecap_cmd
from tests.detect.conftest import LIBSSL, findings_of, stop

pytestmark = [pytest.mark.bpf]

ITERATOR_PROGRAMS = {"task_files", "tasks", "hooked_files"}


def _holders(walk: holders.FdWalk, pids: set[int]) -> set[tuple]:
    return {(h.pid, h.fd, h.kind, h.obj_id, h.prog_id) for h in walk.holders if h.pid in pids}


def _probes(walk: holders.FdWalk, pids: set[int]) -> set[tuple]:
    return {
        (p.source, p.type, p.target, p.offset, p.prog_id, p.holder_pid, p.fd)
        for p in walk.probes
        if p.holder_pid in pids
    }


@pytest.mark.parametrize("mode", ["ioctl", "link"])
def test_both_walks_find_the_same_holders_and_probes(hook, mode):
    h = hook(
        f"{LIBSSL}:SSL_write", f"{LIBSSL}:SSL_read", mode=mode, ret=True, map_name="walk_test_map"
    )
    by_proc = holders.walk()
    with kernel_walk.KernelWalker() as kernel:
        by_kernel = holders.walk(kernel=kernel)
    assert by_kernel.method == "kernel"
    mine = _holders(by_proc, {h.pid})
    assert mine, "the /proc walk saw nothing of the hook"
    assert _holders(by_kernel, {h.pid}) == mine
    assert {k for _, _, k, _, _ in mine} >= {"prog", "map"}
    assert ("perf_event" if mode == "ioctl" else "link") in {k for _, _, k, _, _ in mine}
    assert _probes(by_kernel, {h.pid}) == _probes(by_proc, {h.pid})
    # same process universe and mount namespaces (processes may come and go meanwhile)
    assert abs(by_kernel.processes - by_proc.processes) < 10
    assert set(by_kernel.mount_ns) == set(by_proc.mount_ns)
    assert by_kernel.fds > 0


def test_both_walks_give_the_same_findings_and_victims(hook, tls_victim):
    h = hook(f"{LIBSSL}:SSL_write", ret=True)
    docs = {walk: run_scan(ScanOptions(walk=walk)) for walk in ("procfs", "kernel")}
    (a,) = findings_of(docs["procfs"], pid=h.pid)
    (b,) = findings_of(docs["kernel"], pid=h.pid)
    for key in ("id", "severity", "category", "programs", "hooked"):
        assert a[key] == b[key], key
    assert tls_victim.pid in {v["pid"] for v in b["victims"]}
    assert {v["pid"] for v in a["victims"]} == {v["pid"] for v in b["victims"]}
    assert docs["kernel"]["scanner"]["walk"] == "kernel"
    assert docs["procfs"]["scanner"]["walk"] == "procfs"


def test_victim_search_through_the_reverse_map_matches_every_maps_file(tls_victim):
    st = os.stat(LIBSSL)
    files = {(st.st_dev, st.st_ino): LIBSSL}
    with kernel_walk.KernelWalker() as kernel:
        candidates = kernel.mappers(files)
        via_kernel = owners.victims(files, kernel=kernel)
    via_proc = owners.victims(files)
    assert tls_victim.pid in candidates
    assert candidates[tls_victim.pid] == {(st.st_dev, st.st_ino)}
    assert {v["pid"] for v in via_kernel[(st.st_dev, st.st_ino)]} == {
        v["pid"] for v in via_proc[(st.st_dev, st.st_ino)]
    }


def test_a_file_replaced_after_resolution_is_not_matched(tmp_path, tls_victim):
    """The walker opens the path again; a different file there now matches nothing."""
    st = os.stat(LIBSSL)
    decoy = tmp_path / "libssl.so.3"
    decoy.write_bytes(b"\x7fELF not really")
    with kernel_walk.KernelWalker() as kernel:
        assert kernel.mappers({(st.st_dev, st.st_ino): str(decoy)}) == {}


def test_the_walk_leaves_nothing_loaded_or_open(hook):
    hook(f"{LIBSSL}:SSL_write")
    fds_before = sorted(os.listdir("/proc/self/fd"))
    doc = run_scan(ScanOptions(walk="kernel"))
    assert doc["scanner"]["walk"] == "kernel"
    assert sorted(os.listdir("/proc/self/fd")) == fds_before
    names = {p["name"] for p in doc["inventory"]["programs"]}
    assert not names & ITERATOR_PROGRAMS, "the scanner inventoried its own iterators"
    assert not {p.name for p in programs.list_programs()} & ITERATOR_PROGRAMS
    assert not any(h["pid"] == os.getpid() for h in doc["inventory"]["holders"])


def test_auto_uses_the_kernel_walk_on_a_busy_host(monkeypatch):
    monkeypatch.setattr("ecap.detect.scan.KERNEL_WALK_MIN_PROCESSES", 1)
    assert run_scan()["scanner"]["walk"] == "kernel"
    monkeypatch.setattr("ecap.detect.scan.KERNEL_WALK_MIN_PROCESSES", 10**9)
    assert run_scan()["scanner"]["walk"] == "procfs"


def test_missing_loader_falls_back_or_fails_as_asked(monkeypatch):
    monkeypatch.setattr(kernel_walk, "LOADER_NAME", "not-built.loader")
    monkeypatch.setattr("ecap.detect.scan.KERNEL_WALK_MIN_PROCESSES", 1)
    doc = run_scan()
    assert doc["scanner"]["walk"] == "procfs"
    assert "not-built.loader not built" in doc["scanner"]["walk_note"]
    with pytest.raises(Error, match="kernel walk unavailable"):
        run_scan(ScanOptions(walk="kernel"))


def test_damaged_loader_is_refused_not_run(monkeypatch, tmp_path):
    real = kernel_walk._loader_bytes(kernel_walk.LOADER_NAME)
    monkeypatch.setattr(kernel_walk, "_loader_bytes", lambda *_: real[:-100])
    with pytest.raises(kernel_walk.KernelWalkUnavailable, match="damaged"):
        kernel_walk.KernelWalker()


def test_cli_walk_flag(hook, tmp_path):
    h = hook(f"{LIBSSL}:SSL_write")
    out = tmp_path / "scan.json"
    proc = subprocess.run(
        [
            ecap_cmd("ecap-detect"),
            "scan",
            "--walk",
            "kernel",
            "--json",
            str(out),
            "--fail-on",
            "critical",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["scanner"]["walk"] == "kernel"
    assert findings_of(doc, pid=h.pid)
    bad = subprocess.run(
        [ecap_cmd("ecap-detect"), "scan", "--walk", "fast"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    stop(h.proc)


def test_victim_search_falls_back_to_every_maps_file(monkeypatch, tls_victim):
    """A reverse map that cannot be walked to the end must not lose victims."""

    def refuse(self, files):
        raise kernel_walk.KernelWalkUnavailable("walk cut short")

    monkeypatch.setattr(kernel_walk.KernelWalker, "mappers", refuse)
    st = os.stat(LIBSSL)
    with kernel_walk.KernelWalker() as kernel:
        found = owners.victims({(st.st_dev, st.st_ino): LIBSSL}, kernel=kernel)
    assert tls_victim.pid in {v["pid"] for v in found[(st.st_dev, st.st_ino)]}
