"""Benchmark of ``ecap-audit capture tls`` and ``capture gotls`` (``make bench``; not
part of the tests).

Two targets write back-to-back to the same local C TLS reader (bench/tls_bench.c's
server): a C client (bench/tls_bench.c) doing N SSL_write calls of 1 KiB, 16 KiB and
64 KiB (``tls``), and a Go client (bench/gotls_bench.go, Go's crypto/tls) doing N
(*tls.Conn).Write calls of 1 KiB and 64 KiB (``gotls``). For each size, in one run,
the target's throughput is measured:

  none       no probe at all
  count      a count-only uprobe on the module's data functions' entries (tls:
             SSL_write/SSL_read/SSL_write_ex/SSL_read_ex; gotls: (*Conn).Write and
             (*Conn).Read) — the floor any uprobe-based tool pays
  ecap       under ``ecap-audit capture MODULE --format jsonl`` (full payload copied)
  bpftrace   (tls only) under a bpftrace one-liner copying 64 bytes per call
  count-ret  the same with a probe on each return as well: a uretprobe for tls, a
             uprobe on every RET instruction for gotls (what gotls attaches; any tool
             that needs the real byte count, or the data a read returns, pays it)
  kernel     ecap's programs and probes with a 1 GiB ring nobody reads during the
             run: the in-kernel cost alone, without the capture process competing
             for CPU (these machines have two vCPUs, and the target and its reader
             already keep both busy)

It prints ratios and lost events, then (tls) time from launching ``ecap-audit
capture`` to its first captured event, and the capture process's peak RSS. Results
are appended to BENCHMARKS.md by hand (the numbers depend on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ecap.authz import keys, request, token  # noqa: E402
from ecap.capture import modules  # noqa: E402
from ecap.capture.kernel import KernelSide  # noqa: E402
from ecap.ebpf import attach, loader  # noqa: E402
from tests.count_probe import count_image  # noqa: E402
from tests.go_programs import build_go  # noqa: E402
from tests.tls_helpers import make_cert  # noqa: E402

OUT = REPO / "bench" / "out"
ECAP = str(Path(sys.executable).parent / "ecap-audit")


@dataclass(frozen=True)
class Target:
    """A program that writes back-to-back, the module that captures it, and the
    functions a count-only probe counts."""

    module: str
    client: Path
    sizes: dict[int, int]
    """Write size → calls per run."""
    counted: tuple[str, ...]
    modes: tuple[str, ...]

    def count_offsets(self, pid: int, with_returns: bool) -> tuple[str, list[int], list[int]]:
        """(path, entry offsets, return offsets) of the counted functions in ``pid``:
        where the module itself probes them (for gotls the entry probe is on the
        prologue's branch and the returns are the RET instructions; tls counts its
        returns with a uretprobe on the entries)."""
        hook = modules.get(self.module).resolve(pid, {})
        ours = [p for p in hook.probes if p.function in self.counted and not p.retprobe]
        entries = [p.offset for p in ours if not p.program.endswith("return")]
        returns = [p.offset for p in ours if p.program.endswith("return")] if with_returns else []
        return str(hook.path), entries, returns


def build() -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    binary = OUT / "tls_bench"
    src = REPO / "bench" / "tls_bench.c"
    if not binary.exists() or binary.stat().st_mtime < src.stat().st_mtime:
        if shutil.which("gcc") is None or not Path("/usr/include/openssl/ssl.h").exists():
            sys.exit("bench: needs gcc and libssl-dev (apt-get install gcc libssl-dev)")
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(src), "-lssl", "-lcrypto"], check=True)
    return binary


def targets(c_binary: Path, which: list[str]) -> list[Target]:
    out = []
    if "tls" in which:
        out.append(Target("tls", c_binary, {1024: 200_000, 16 * 1024: 40_000, 64 * 1024: 10_000},
                          ("SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex"),
                          ("none", "count", "count-ret", "kernel", "ecap", "bpftrace")))  # fmt: skip
    if "gotls" in which:
        go_client = build_go((REPO / "bench" / "gotls_bench.go").read_text(), "gotls_bench")
        out.append(Target("gotls", go_client, {1024: 200_000, 64 * 1024: 10_000},
                          ("crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).Read"),
                          ("none", "count", "count-ret", "kernel", "ecap")))  # fmt: skip
    return out


class Env:
    """A private trust dir, journal and run dir, and a signing key, for tokens."""

    def __init__(self, root: Path) -> None:
        self.root = root
        prefix = root / "signer"
        _, pub, _ = keys.generate(prefix)
        keys.install_trusted(pub, root / "trust")
        self.key = keys.load_private(Path(f"{prefix}.key"))
        self.env = {
            **os.environ,
            "ECAP_TRUST_DIR": str(root / "trust"),
            "ECAP_JOURNAL": str(root / "journal.jsonl"),
            "ECAP_RUN_DIR": str(root / "run"),
        }
        self.cert, self.keyfile = make_cert(root)

    def token_file(self, pid: int, module: str = "tls") -> Path:
        req = request.build([pid], modules=[module], modes=["jsonl"], reason="benchmark")
        text = token.issue(
            req, self.key, operator="bench", reason="benchmark", ttl_seconds=3600, issuer="bench"
        )
        path = self.root / f"token-{pid}.jwt"
        path.write_text(text)
        return path


def start_pair(binary: Path, env: Env, size: int, count: int, target: Target | None = None):
    portfile = env.root / "port"
    portfile.unlink(missing_ok=True)
    server = subprocess.Popen(
        [str(binary), "server", str(env.cert), str(env.keyfile), str(portfile)],
        stdout=subprocess.PIPE,
        text=True,
    )
    while not portfile.exists():
        time.sleep(0.01)
    port = portfile.read_text().strip()
    if target is None or target.module == "tls":
        args = [str(binary), "client", port, str(size), str(count)]
    else:
        args = [str(target.client), port, str(size), str(count)]
    client = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)  # handshake done; the client now waits for "go"
    return server, client


def go(client) -> float:
    client.stdin.write("go\n")
    client.stdin.flush()
    elapsed_ns = int(client.stdout.readline())
    client.wait()
    return elapsed_ns / 1e9


def run_once(binary: Path, env: Env, target: Target, mode: str, size: int, count: int,
             ring_mb: int) -> dict:  # fmt: skip
    server, client = start_pair(binary, env, size, count, target)
    module = modules.get(target.module)
    result: dict = {"mode": mode, "size": size, "count": count}
    tool = None
    counter = None
    links: list[attach.Attachment] = []
    kernel = None
    try:
        if mode in ("count", "count-ret"):
            counter = loader.load(count_image())
            path, entries, returns = target.count_offsets(client.pid, mode == "count-ret")
            probes = [("count_call", False, entries)]
            if mode == "count-ret" and target.module == "tls":
                probes.append(("count_return", True, entries))  # uretprobes
            elif mode == "count-ret":
                probes.append(("count_call", False, returns))  # uprobes on RET instructions
            for program, ret, offsets in probes:
                links.append(
                    attach.uprobe_multi(counter.prog_fd(program), path, offsets,
                                        [0] * len(offsets), client.pid, retprobe=ret)
                )  # fmt: skip
        elif mode == "ecap":
            out = OUT / f"capture-{target.module}-{size}.jsonl"
            started = time.monotonic()
            tool = subprocess.Popen(
                [
                    ECAP,
                    "capture",
                    target.module,
                    "--pid",
                    str(client.pid),
                    "--token",
                    str(env.token_file(client.pid, target.module)),
                    "--format",
                    "jsonl",
                    "--output",
                    str(out),
                    "--ring-size",
                    str(ring_mb),
                    "--quiet",
                ],
                env=env.env,
                stderr=subprocess.PIPE,
                text=True,
            )
            rss = PeakRss(tool.pid)
            _wait_for_session(env, started)
        elif mode == "kernel":
            kernel = KernelSide(module, ring_mb=1024)
            kernel.authorize_pids([client.pid])
            kernel.attach_tracepoints()
            kernel.attach(module.resolve(client.pid, {}))
        elif mode == "bpftrace":
            lib = module.resolve(client.pid, {}).display_path
            prog = (
                f'uprobe:{lib}:SSL_write {{ printf("%r\\n", buf(arg1, 64)); }} '
                f'uprobe:{lib}:SSL_read {{ printf("%r\\n", buf(arg1, 64)); }}'
            )
            tool = subprocess.Popen(
                ["bpftrace", "-p", str(client.pid), "-e", prog],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            lines: list[int] = [0]
            ready = threading.Event()

            lost_lines: list[str] = []

            def pump() -> None:
                for line in tool.stdout:
                    if line.startswith("Attaching"):
                        ready.set()
                    elif line.startswith("Lost"):
                        lost_lines.append(line)
                    else:
                        lines[0] += 1
                ready.set()

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            ready.wait(30)
            time.sleep(0.5)
        seconds = go(client)
        result["seconds"] = seconds
        result["mb_per_s"] = size * count / seconds / 1e6
        result["calls_per_s"] = count / seconds
        if mode == "ecap":
            _, err = tool.communicate(timeout=600)
            summary = json.loads(out.read_text().splitlines()[-1])
            result["lost_events"] = summary["lost_events"]
            result["captured_writes"] = summary["events"]["write"]
            result["capture_peak_rss_mb"] = rss.result()
            out.unlink(missing_ok=True)
        elif mode == "bpftrace":
            time.sleep(1.0)
            tool.send_signal(2)
            _, err = tool.communicate(timeout=60)
            reader.join(10)
            lost = sum(int(n) for n in re.findall(r"Lost (\d+) events", err + "".join(lost_lines)))
            result["lost_events"] = lost
            result["captured_writes"] = lines[0]
        elif mode in ("count", "count-ret"):
            values = counter.map("calls").lookup_all(bytes(4)) or []
            result["counted"] = sum(int.from_bytes(v[:8], "little") for v in values)
        elif mode == "kernel":
            stats = kernel.stats()
            result["lost_events"] = stats["lost_events"]
            result["captured_writes"] = "-"
    finally:
        attach.detach_all(links)
        if counter is not None:
            counter.close()
        if kernel is not None:
            kernel.close()
        for proc in (client, tool, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    return result


class PeakRss:
    """Samples /proc/PID/status VmHWM (the kernel's own peak-RSS mark) until exit."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.mib: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            m = re.search(r"VmHWM:\s+(\d+) kB", text)
            if m:
                self.mib = int(m.group(1)) / 1024
            time.sleep(0.02)

    def result(self) -> float | None:
        self._thread.join(5)
        return self.mib


def _wait_for_session(env: Env, started: float, timeout: float = 30) -> float:
    """Seconds from launch until the capture registered its session (attached)."""
    sessions = env.root / "run" / "sessions"
    while time.monotonic() - started < timeout:
        if sessions.is_dir() and any(sessions.glob("*.json")):
            return time.monotonic() - started
        time.sleep(0.005)
    raise RuntimeError("capture did not start")


def time_to_first_event(binary: Path, env: Env) -> dict:
    portfile = env.root / "port"
    portfile.unlink(missing_ok=True)
    server = subprocess.Popen(
        [str(binary), "server", str(env.cert), str(env.keyfile), str(portfile)],
        stdout=subprocess.DEVNULL,
    )
    while not portfile.exists():
        time.sleep(0.01)
    client = subprocess.Popen([str(binary), "trickle", portfile.read_text().strip()])
    time.sleep(0.3)
    out = OUT / "first-event.jsonl"
    tool = None
    try:
        tok = env.token_file(client.pid)
        started = time.monotonic()
        tool = subprocess.Popen(
            [
                ECAP,
                "capture",
                "tls",
                "--pid",
                str(client.pid),
                "--token",
                str(tok),
                "--format",
                "jsonl",
                "--output",
                str(out),
                "--quiet",
            ],
            env=env.env,
            stderr=subprocess.DEVNULL,
        )
        rss = PeakRss(tool.pid)
        attached = _wait_for_session(env, started)
        first = None
        while time.monotonic() - started < 30:
            if out.exists() and '"type":"event"' in out.read_text():
                first = time.monotonic() - started
                break
            time.sleep(0.005)
        time.sleep(1.0)
        tool.send_signal(2)
        tool.wait(30)
        return {"attached_s": attached, "first_event_s": first, "idle_peak_rss_mb": rss.result()}
    finally:
        for proc in (tool, client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        out.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ring-size", type=int, default=32, help="ecap ring size, MiB")
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls")
    parser.add_argument("--targets", default="tls,gotls", help="tls, gotls or both (default)")
    parser.add_argument("--json", help="also write results as JSON here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root")
    binary = build()
    count_image()  # built before any timing
    results: dict[str, list] = {}
    first = None
    with tempfile.TemporaryDirectory(prefix="ecap-bench-") as tmp:
        env = Env(Path(tmp))
        for target in targets(binary, args.targets.split(",")):
            call = "SSL_write" if target.module == "tls" else "(*tls.Conn).Write"
            for size, count in target.sizes.items():
                count = count // 10 if args.quick else count
                row = {
                    m: run_once(binary, env, target, m, size, count, args.ring_size)
                    for m in target.modes
                }
                results.setdefault(target.module, []).append(row)
                floor = row["count"]["calls_per_s"]
                print(f"\n{target.module}: {size // 1024} KiB x {count} {call}:")
                for mode, r in row.items():
                    extra = ""
                    if "lost_events" in r:
                        extra = f"  lost {r['lost_events']}, calls captured {r['captured_writes']}"
                    if r.get("capture_peak_rss_mb"):
                        extra += f", capture peak RSS {r['capture_peak_rss_mb']:.0f} MiB"
                    print(
                        f"  {mode:9s} {r['calls_per_s']:>10.0f} calls/s {r['mb_per_s']:>8.1f} MB/s"
                        f"  x{r['calls_per_s'] / floor:.2f} of count-only{extra}"
                    )
                if "bpftrace" in row:
                    ratio = row["ecap"]["calls_per_s"] / row["bpftrace"]["calls_per_s"]
                    print(f"  ecap / bpftrace: x{ratio:.2f}")
        if "tls" in args.targets.split(","):
            first = time_to_first_event(binary, env)
            print(
                f"\nattached {first['attached_s']:.2f} s after launch; first event at "
                f"{first['first_event_s']:.2f} s; idle capture peak RSS "
                f"{first['idle_peak_rss_mb']:.0f} MiB"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"targets": results, "startup": first}, indent=2))


if __name__ == "__main__":
    main()
