"""Benchmark: a fleet report of 500 hosts must render in under 2 s into under 5 MB.

The scans are real: one ``ecap-detect scan`` of this host taken while a bpftrace
uprobe on libssl's SSL_write runs (a rogue plaintext hook with its owner and
victims), and one taken after it stopped. The fleet is 500 copies with distinct
host names and machine ids; one host in ten carries the rogue finding, the rest
the clean scan. Each host keeps its full inventory, so the input is as large as a
real fleet's. Measured (median of several runs):

1. ``render_fleet_report`` on the 500 documents in memory (the budget);
2. ``ecap-detect report HOST.json x500 --html`` end to end (interpreter start-up,
   reading and checking 500 files, rendering, writing);
3. the host report of the rogue scan (remediation snippets from ecap-harden).

Run as root: ``.venv/bin/python bench/bench_reports.py`` (or ``make bench``).
"""

from __future__ import annotations

import copy
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ecap.detect.scan import run_scan  # noqa: E402
from ecap.reports.fleet import render_fleet_report  # noqa: E402
from ecap.reports.host import render_host_report  # noqa: E402

HOSTS = 500
ROGUE_EVERY = 10
RUNS = 5
BUDGET_SECONDS = 2.0
BUDGET_BYTES = 5 * 1024 * 1024
LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
BIN = Path(sys.executable).parent


def _real_scans() -> tuple[dict, dict]:
    """(scan with a bpftrace SSL_write hook attached, scan after it stopped)."""
    proc = subprocess.Popen(
        ["bpftrace", "-e", f"uprobe:{LIBSSL}:SSL_write {{ @n = count(); }}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for _ in range(20):
            line = proc.stdout.readline()
            if not line or "Attaching" in line:
                break
        # bpftrace prints "Attaching" before it attaches: scan until the hook shows
        deadline = time.monotonic() + 30
        while True:
            rogue = run_scan()
            if any((f.get("owner") or {}).get("pid") == proc.pid for f in rogue["findings"]):
                break
            if time.monotonic() > deadline:
                raise SystemExit("bpftrace's hook never showed in the scan; is bpftrace working?")
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(10)
    return rogue, run_scan()


def _fleet(rogue: dict, clean: dict) -> list[dict]:
    docs = []
    for i in range(HOSTS):
        doc = copy.deepcopy(rogue if i % ROGUE_EVERY == 3 else clean)
        doc["host"]["hostname"] = f"node-{i:04d}.example.internal"
        doc["host"]["machine_id"] = f"{i:032x}"
        docs.append(doc)
    return docs


def _median(fn) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    rogue, clean = _real_scans()
    docs = _fleet(rogue, clean)
    tmp = Path(tempfile.mkdtemp(prefix="ecap-bench-reports-"))
    try:
        html = tmp / "fleet.html"
        render_fleet_report(docs, html)  # warm-up: template compilation
        lib = _median(lambda: render_fleet_report(docs, html))
        size = html.stat().st_size
        twin = tmp / "fleet.json"
        render_fleet_report(docs, tmp / "fleet2.html", twin)

        files = []
        for i, doc in enumerate(docs):
            path = tmp / f"host-{i:04d}.json"
            path.write_text(json.dumps(doc))
            files.append(str(path))
        input_bytes = sum(Path(f).stat().st_size for f in files)
        cli_out = tmp / "cli.html"

        def cli() -> None:
            subprocess.run(
                [str(BIN / "ecap-detect"), "report", *files, "--html", str(cli_out)],
                check=True,
                capture_output=True,
            )

        cli_time = _median(cli)
        host_html = tmp / "host.html"
        host_time = _median(lambda: render_host_report(rogue, host_html))

        rogues = sum(1 for i in range(HOSTS) if i % ROGUE_EVERY == 3)
        print(
            f"fleet: {HOSTS} hosts ({rogues} with a rogue sniffer), "
            f"{sum(len(d['findings']) for d in docs)} findings, "
            f"input {input_bytes / 2**20:.1f} MiB of scan JSON"
        )
        print(
            f"  render_fleet_report     {lib:.3f} s  (budget {BUDGET_SECONDS:.1f} s: "
            f"{BUDGET_SECONDS / lib:.1f}x under)"
        )
        print(
            f"  HTML size               {size / 2**20:.2f} MiB  (budget {BUDGET_BYTES / 2**20:.0f} "
            f"MiB: {BUDGET_BYTES / size:.1f}x under); JSON twin {twin.stat().st_size / 2**20:.2f} MiB"
        )
        print(f"  ecap-detect report CLI  {cli_time:.3f} s end to end (start-up, 500 files read)")
        print(
            f"host report of the rogue scan: {host_time * 1000:.0f} ms, "
            f"{host_html.stat().st_size / 1e3:.0f} kB"
        )
        ok = lib < BUDGET_SECONDS and size < BUDGET_BYTES
        print("within budget" if ok else "OVER BUDGET")
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
