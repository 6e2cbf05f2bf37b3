"""Benchmark: how long does `ecap-detect scan` take, against bpftool, in the same run?

Scenarios (each measured several times, median reported):

1. this host as it is;
2. with a uprobe sniffer attached to libssl (victim search reads every maps file);
3. with 2,000 extra processes each holding 16 open fds (the fd walk is linear in fds);
4. with 1,500 decoy uprobes (one process, one counter program, 1,500 perf-event
   uprobes on distinct libc functions): every probe is queried, resolved and
   classified, so the scan must stay linear in probes (issue 17: it took 5.7 s).

For each, the wall time of the full scan — the library call with each fd walk
(``auto``, which the command uses, ``procfs`` and ``kernel``), and the
``ecap-detect scan --json -`` command including interpreter start-up — is set
against the total of ``bpftool prog list``, ``map list``, ``link list`` and
``perf list`` run right then.
bpftool gives less (no owners' details, no function names, no tracefs, no pins in
other namespaces, no findings), so the comparison is generous to it.

Run as root: ``.venv/bin/python bench/bench_detect.py`` (results: bench/out/detect.json).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ecap.detect.scan import ScanOptions, run_scan  # noqa: E402

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
RUNS = 7
EXTRA_PROCS = 2000
FDS_EACH = 16
DECOYS = 1500
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _median(fn, runs: int = RUNS) -> float:
    fn()  # warm caches (page cache, ELF parse cache) as a repeated scan would
    return statistics.median(_time(fn) for _ in range(runs))


def _bpftool_total() -> dict[str, float]:
    tool = shutil.which("bpftool")
    if tool is None:
        raise SystemExit("bpftool not installed (make setup installs it)")
    out = {}
    for obj in ("prog", "map", "link", "perf"):
        cmd = [tool, obj, "list"]
        out[obj] = _median(lambda cmd=cmd: subprocess.run(cmd, capture_output=True, check=True))
    out["total"] = sum(out.values())
    return out


def _cli() -> None:
    subprocess.run(
        [str(ROOT / ".venv/bin/ecap-detect"), "scan", "--json", "-", "--fail-on", "critical"],
        stdout=subprocess.DEVNULL,
        check=False,
    )


def _python_startup() -> None:
    subprocess.run([str(ROOT / ".venv/bin/python"), "-c", "pass"], check=True)


def measure(label: str) -> dict:
    doc = run_scan()
    scans = {
        walk: _median(lambda walk=walk: run_scan(ScanOptions(walk=walk)))
        for walk in ("auto", "procfs", "kernel")
    }
    result = {
        "scenario": label,
        "processes": doc["scanner"]["processes"],
        "fds": doc["scanner"]["fds"],
        "auto_walk": doc["scanner"]["walk"],
        "programs": len(doc["inventory"]["programs"]),
        "probes": len(doc["inventory"]["probes"]),
        "scan_s": scans,
        "cli_s": _median(_cli, runs=5),
        "python_startup_s": _median(_python_startup, runs=5),
        "bpftool_s": _bpftool_total(),
    }
    bt = result["bpftool_s"]["total"]
    print(
        f"{label:34} procs={result['processes']:5} fds={result['fds']:6}  run_scan: "
        f"auto({result['auto_walk']})={scans['auto'] * 1000:6.1f} "
        f"procfs={scans['procfs'] * 1000:6.1f} kernel={scans['kernel'] * 1000:6.1f} ms  "
        f"command={result['cli_s'] * 1000:6.1f} ms (python alone "
        f"{result['python_startup_s'] * 1000:4.1f})  bpftool x4={bt * 1000:6.1f} ms  "
        f"ratio auto/bpftool={scans['auto'] / bt:4.2f}",
        flush=True,
    )
    return result


def _spawn_fd_holders(n: int) -> list[subprocess.Popen]:
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(FDS_EACH)]
    procs = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    ["sleep", "3600"],
                    pass_fds=held,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
            )
    finally:
        for fd in held:
            os.close(fd)
    return procs


def _decoy_targets(n: int) -> list[str]:
    """``LIBC:0xOFFSET`` of n distinct function entries."""
    from ecap.elf import open_elf

    image = open_elf(LIBC)
    _addrs, syms = image._by_address
    offsets = sorted(
        {image.vaddr_to_offset(v) for _name, v, size in syms if size > 16 and v % 16 == 0} - {None}
    )
    return [f"{LIBC}:{off:#x}" for off in offsets[:n]]  # type: ignore[str-format]


def _start_decoys(n: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/detect/hook_helper.py"),
            "--program",
            "counter",
            "--best-effort",
            *_decoy_targets(n),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


def _compile_bytecode() -> None:
    """Byte-compile ecap as a wheel install would: with PYTHONDONTWRITEBYTECODE set
    (as on these machines) an editable install otherwise recompiles every module
    on every command start, which is not what a deployed ecap-detect pays."""
    import compileall

    for pkg in ("ecap", "capture", "detect", "harden", "reports", "bpf", "policies"):
        compileall.compile_dir(str(ROOT / pkg), quiet=1)


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    _compile_bytecode()
    results = [measure("host as is")]
    sniffer = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/detect/hook_helper.py"),
            "--mode",
            "ioctl",
            f"{LIBSSL}:SSL_write",
            f"{LIBSSL}:SSL_read",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sniffer.stdout is not None
        sniffer.stdout.readline()
        results.append(measure("with a libssl uprobe sniffer"))
        procs = _spawn_fd_holders(EXTRA_PROCS)
        try:
            results.append(measure(f"sniffer + {EXTRA_PROCS} procs x {FDS_EACH} fds"))
        finally:
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()
    finally:
        sniffer.terminate()
        sniffer.wait()
    decoys = _start_decoys(DECOYS)
    try:
        results.append(measure(f"{DECOYS} decoy uprobes (counters)"))
    finally:
        decoys.terminate()  # unregistering 1,500 uprobes takes the kernel a while
        decoys.wait()
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "detect.json").write_text(
        json.dumps(
            {"kernel": os.uname().release, "cpus": os.cpu_count(), "results": results}, indent=2
        )
    )
    print(f"wrote {out / 'detect.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
