"""Benchmark: ``ecap-detect watch`` — how fast it alerts, what it costs, and the fleet run.

Measured in one run, printed, and saved to bench/out/watch.json:

1. attach → alert latency (median, max over RUNS) for a bcc uprobe sniffer, a
   bpftrace uretprobe and a tracefs uprobe written to ``uprobe_events``. For the
   two BPF tools the watcher itself reports ``latency_ms``: from the kernel
   timestamp of the first attaching syscall it saw to the moment the alert is
   written. For tracefs the clock starts just before the write. Target: ≤ 1 s.
2. watcher CPU while idle (IDLE_SECONDS, % of one core, from /proc/PID/stat),
   and during a burst of 1,000 unrelated BPF program loads (socket filters:
   loaded and closed; filtered in the kernel, never reach the watcher) and of
   1,000 load + attach + detach cycles (raw tracepoint on ``sched_process_free``:
   each one wakes the watcher). Target: idle ≤ 1 %.
3. the syscall cost the event program adds to *every* process (it runs at every
   syscall exit): ``getppid`` ns/call without and with the watcher, side by side.
4. watcher RSS (VmHWM, peak). Target: ≤ 80 MiB.
5. the Ansible scan playbook's wall time on the test fleet (three test hosts and
   one unreachable, as the tests make them).

Run as root: ``.venv/bin/python bench/bench_watch.py`` (``--no-fleet`` skips 5).
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ecap.detect import bpfsys  # noqa: E402
from tests.detect.conftest import stop  # noqa: E402
from tests.detect.test_live_hooks import append_line, offset_of  # noqa: E402
from tests.detect.watchproc import WatchProcess, owner_pid  # noqa: E402

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
PY = sys.executable
RUNS = 5
IDLE_SECONDS = 30
BURST = 1000
TICKS = os.sysconf("SC_CLK_TCK")
BCC_SNIFFER = [PY, str(ROOT / "tests/detect/bcc_sniffer.py"), LIBSSL]
BPFTRACE = ["bpftrace", "-e", f"uretprobe:{LIBSSL}:SSL_read {{ @n = count(); }}"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_watcher() -> WatchProcess:
    env = {**os.environ, "ECAP_RUN_DIR": tempfile.mkdtemp(prefix="ecap-bench-run-")}
    watch = WatchProcess(
        ["--rescan", "3600", "--heartbeat", "3600", "--min-severity", "medium"], env=env
    )
    watch.wait_for(lambda r: r["type"] == "start", timeout=60)
    watch.wait_for(lambda r: r.get("trigger") == "startup" or r["type"] == "heartbeat", timeout=5)
    return watch


def latency_tool(watch: WatchProcess, argv: list[str]) -> float:
    """Start a sniffing tool, wait for its alert and its resolution; the alert's latency."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        alert = watch.wait_for(lambda r: r["type"] == "alert" and owner_pid(r) == proc.pid, 60)
    finally:
        stop(proc)
    watch.wait_for(lambda r: r["type"] == "resolved" and owner_pid(r) == proc.pid, 30)
    return alert["latency_ms"]


def latency_tracefs(watch: WatchProcess, run: int) -> float:
    event = f"ecapbench{os.getpid()}/r{run}"
    control = Path("/sys/kernel/tracing/uprobe_events")
    start = time.monotonic()
    append_line(control, f"p:{event} {LIBSSL}:{offset_of(LIBSSL, 'SSL_peek'):#x}")
    try:
        alert = watch.wait_for(
            lambda r: (
                r["type"] == "alert"
                and (r["finding"].get("owner") or {}).get("tracefs_event") == event
            ),
            30,
        )
    finally:
        append_line(control, f"-:{event}")
    watch.wait_for(lambda r: r["type"] == "resolved" and r["finding_id"] == alert["finding_id"])
    return (alert["_received"] - start) * 1000


def burst(attach: bool) -> None:
    """BURST trivial socket-filter loads (and, with ``attach``, raw tracepoint attaches)."""
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    tp = ctypes.create_string_buffer(b"sched_process_free")
    prog_type = 17 if attach else 1  # BPF_PROG_TYPE_RAW_TRACEPOINT / SOCKET_FILTER
    for _ in range(BURST):
        attr = ctypes.create_string_buffer(128)
        struct.pack_into(
            "<IIQQ", attr, 0, prog_type, 2, ctypes.addressof(code), ctypes.addressof(lic)
        )
        fd = bpfsys.bpf(5, attr)
        if attach:
            link_attr = ctypes.create_string_buffer(16)
            struct.pack_into("<QI", link_attr, 0, ctypes.addressof(tp), fd)
            os.close(bpfsys.bpf(17, link_attr))
        os.close(fd)


def cpu_during(watch: WatchProcess, action, settle: float = 2.0) -> tuple[float, float]:
    """(watcher CPU seconds, wall seconds) over ``action`` and a settle time after it."""
    cpu0, t0 = cpu_seconds(watch.pid), time.monotonic()
    action()
    time.sleep(settle)
    return cpu_seconds(watch.pid) - cpu0, time.monotonic() - t0


def syscall_ns(calls: int = 300_000) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            os.getppid()
        best = min(best, (time.perf_counter_ns() - t0) / calls)
    return best


def fleet_wall_time() -> dict:
    from tests.fleet.conftest import make_fleet

    with (
        tempfile.TemporaryDirectory(prefix="ecap-bench-fleet-") as tmp,
        make_fleet(Path(tmp)) as fleet,
    ):
        args = fleet.scan_args(Path(tmp) / "out")
        t0 = time.monotonic()
        first = fleet.playbook("scan.yml", *args)
        t1 = time.monotonic()
        again = fleet.playbook("scan.yml", *args)
        t2 = time.monotonic()
        return {
            "hosts": len(fleet.hosts),
            "unreachable": 1,
            "first_run_s (install + scan + report)": round(t1 - t0, 1),
            "second_run_s (installed: scan + report)": round(t2 - t1, 1),
            "exit_codes": [first.returncode, again.returncode],
        }


def summary(values: list[float]) -> dict:
    return {
        "median_ms": round(statistics.median(values), 1),
        "max_ms": round(max(values), 1),
        "runs": [round(v, 1) for v in values],
    }


def main() -> None:
    results: dict = {}
    base_ns = syscall_ns()
    watch = start_watcher()
    try:
        results["latency"] = {
            "bcc uprobe sniffer": summary([latency_tool(watch, BCC_SNIFFER) for _ in range(RUNS)]),
            "bpftrace uretprobe": summary([latency_tool(watch, BPFTRACE) for _ in range(RUNS)]),
            "tracefs uprobe (echo > uprobe_events)": summary(
                [latency_tracefs(watch, i) for i in range(RUNS)]
            ),
        }
        with_ns = syscall_ns()
        results["syscall_ns"] = {
            "without watcher": round(base_ns, 1),
            "with watcher": round(with_ns, 1),
            "ratio": round(with_ns / base_ns, 3),
        }
        cpu, wall = cpu_during(watch, lambda: time.sleep(IDLE_SECONDS), settle=0)
        results["cpu_percent_of_one_core"] = {"idle": round(100 * cpu / wall, 2)}
        for name, attach in (("1000 loads", False), ("1000 load+attach+detach", True)):
            cpu, wall = cpu_during(watch, lambda a=attach: burst(a))
            results["cpu_percent_of_one_core"][name] = round(100 * cpu / wall, 1)
            results["cpu_percent_of_one_core"][f"{name} (watcher CPU s)"] = round(cpu, 2)
        results["peak_rss_mib"] = round(peak_rss_mib(watch.pid), 1)
    finally:
        watch.stop()
    stop = watch.records[-1]
    results["scans"] = stop.get("counts", {}).get("scans")
    results["kernel_events"] = stop.get("counts", {}).get("kernel_events")
    if "--no-fleet" not in sys.argv:
        results["ansible_fleet"] = fleet_wall_time()
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "watch.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
