"""Benchmark of ``ecap-audit capture tls`` and ``capture gnutls`` (``make bench``;
not part of the tests).

A C target does N back-to-back writes of 1 KiB, 16 KiB and 64 KiB to a local C TLS
reader (bench/tls_bench.c): through OpenSSL's SSL_write (bench/tls_bench.c's
client, module ``tls``) and through GnuTLS's gnutls_record_send
(bench/gnutls_bench.c, module ``gnutls``). For each module and size, in one run,
the target's throughput is measured:

  none       no probe at all
  count      a count-only uprobe on the functions the module captures data with
             (tls: SSL_write/SSL_read/SSL_write_ex/SSL_read_ex; gnutls:
             gnutls_record_send2/_send_range/_recv/_recv_seq): the floor any
             uprobe-based tool pays
  ecap       under ``ecap-audit capture MODULE --format jsonl`` (full payload copied)
  ecap-text  (tls) the same with ``--format text`` (HTTP-aware rendering)
  ecap-pcapng  (tls) the same with ``--format pcapng``: the connection's packets from
             the packet tap, through the key verifier, into a pcapng file (the
             plaintext path runs too: it names the connections)
  bpftrace   (tls only) under a bpftrace one-liner copying 64 bytes per call
  count-ret  the same with a uretprobe on each as well (what any tool that needs the
             real byte count, or the data a read returns, pays at minimum)
  kernel     ecap's programs and probes with a 1 GiB ring nobody reads during the
             run: the in-kernel cost alone, without the capture process competing
             for CPU (these machines have two vCPUs, and the target and its reader
             already keep both busy)

It prints ratios and lost events, then time from launching ``ecap-audit capture``
to its first captured event, and the capture process's peak RSS. Results are
appended to BENCHMARKS.md by hand (the numbers depend on the machine).
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ecap.authz import keys, request, token  # noqa: E402
from ecap.capture import modules  # noqa: E402
from ecap.capture.kernel import KernelSide  # noqa: E402
from ecap.ebpf import attach, loader  # noqa: E402
from tests.tls_helpers import make_cert  # noqa: E402

OUT = REPO / "bench" / "out"
ECAP = str(Path(sys.executable).parent / "ecap-audit")
SIZES = {1024: 200_000, 16 * 1024: 40_000, 64 * 1024: 10_000}
TARGETS = {
    # module: (C source of its client, libraries to link, header it needs)
    "tls": ("tls_bench.c", ["-lssl", "-lcrypto"], "/usr/include/openssl/ssl.h", "libssl-dev"),
    "gnutls": ("gnutls_bench.c", ["-lgnutls"], "/usr/include/gnutls/gnutls.h",
               "libgnutls28-dev"),
}  # fmt: skip
MODES = {
    "tls": ("none", "count", "count-ret", "kernel", "ecap-text", "ecap", "ecap-pcapng",
            "bpftrace"),
    "gnutls": ("none", "count", "count-ret", "kernel", "ecap"),
}  # fmt: skip
TLS = modules.get("tls")
COUNT_IMAGE: loader.Image | None = None
ECAP_FORMATS = {"ecap": "jsonl", "ecap-text": "text", "ecap-pcapng": "pcapng"}


def data_offsets(module: modules.CaptureModule, pid: int) -> tuple[str, list[int]]:
    """(file, offsets) of the functions the module captures data with in ``pid``: the
    ones the count-only floor probes, exactly where ecap does."""
    hook = module.resolve(pid, {})
    names = [h.function for h in module.hooks if h.plaintext and h.kind in ("write", "read")]
    return str(hook.path), [hook.functions[n] for n in names if n in hook.functions]


def count_image() -> loader.Image:
    """bench/count.bpf.c, built here with the project's own build script."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_bpf", REPO / "scripts" / "build_bpf.py")
    build_bpf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_bpf)
    OUT.mkdir(parents=True, exist_ok=True)
    blob = build_bpf.build(REPO / "bench" / "count.bpf.c", OUT / "count.loader")
    return loader.read_image("count", blob)


def build(module: str = "tls") -> Path:
    """The module's C client (tls: also the reader every client writes to)."""
    source, libs, header, package = TARGETS[module]
    OUT.mkdir(parents=True, exist_ok=True)
    src = REPO / "bench" / source
    binary = OUT / src.stem
    if not binary.exists() or binary.stat().st_mtime < src.stat().st_mtime:
        if shutil.which("gcc") is None or not Path(header).exists():
            sys.exit(f"bench: needs gcc and {package} (apt-get install gcc {package})")
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(src), *libs], check=True)
    return binary


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

    def last_summary(self) -> dict:
        """The summary of the last capture, from its journal stop entry (every format)."""
        entries = [
            json.loads(line) for line in (self.root / "journal.jsonl").read_text().splitlines()
        ]
        return next(e for e in reversed(entries) if e["event"] == "capture.stop")["summary"]

    def token_file(self, pid: int, module: str = "tls") -> Path:
        req = request.build([pid], modules=[module], modes=["jsonl", "text", "pcapng"],
                            reason="benchmark")  # fmt: skip
        text = token.issue(
            req, self.key, operator="bench", reason="benchmark", ttl_seconds=3600, issuer="bench"
        )
        path = self.root / f"token-{pid}.jwt"
        path.write_text(text)
        return path


def start_pair(reader: Path, client_binary: Path, env: Env, size: int, count: int):
    portfile = env.root / "port"
    portfile.unlink(missing_ok=True)
    server = subprocess.Popen(
        [str(reader), "server", str(env.cert), str(env.keyfile), str(portfile)],
        stdout=subprocess.PIPE,
        text=True,
    )
    while not portfile.exists():
        time.sleep(0.01)
    port = portfile.read_text().strip()
    client = subprocess.Popen(
        [str(client_binary), "client", port, str(size), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)  # handshake done; the client now waits for "go"
    return server, client


def go(client) -> float:
    client.stdin.write("go\n")
    client.stdin.flush()
    elapsed_ns = int(client.stdout.readline())
    client.wait()
    return elapsed_ns / 1e9


def run_once(reader: Path, target: Path, module: modules.CaptureModule, env: Env, mode: str,
             size: int, count: int, ring_mb: int) -> dict:  # fmt: skip
    server, client = start_pair(reader, target, env, size, count)
    result: dict = {"module": module.name, "mode": mode, "size": size, "count": count}
    tool = None
    counter = None
    links: list[attach.Attachment] = []
    kernel = None
    try:
        if mode in ("count", "count-ret"):
            counter = loader.load(COUNT_IMAGE)
            path, offsets = data_offsets(module, client.pid)
            programs = [("count_call", False)] + ([("count_return", True)] * (mode == "count-ret"))
            for program, ret in programs:
                links.append(
                    attach.uprobe_multi(counter.prog_fd(program), path, offsets,
                                        [0] * len(offsets), client.pid, retprobe=ret)
                )  # fmt: skip
        elif mode in ECAP_FORMATS:
            fmt = ECAP_FORMATS[mode]
            out = OUT / f"capture-{module.name}-{size}.{fmt}"
            out.unlink(missing_ok=True)
            Path(f"{out}.session.jsonl").unlink(missing_ok=True)
            started = time.monotonic()
            tool = subprocess.Popen(
                [
                    ECAP,
                    "capture",
                    module.name,
                    "--pid",
                    str(client.pid),
                    "--token",
                    str(env.token_file(client.pid, module.name)),
                    "--format",
                    fmt,
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
            lib = TLS.resolve(client.pid, {}).display_path
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
        if mode in ECAP_FORMATS:
            _, err = tool.communicate(timeout=600)
            summary = env.last_summary()
            result["lost_events"] = summary["lost_events"]
            result["captured_writes"] = summary["events"]["write"]
            result["capture_peak_rss_mb"] = rss.result()
            if "packets" in summary:
                result["packets"] = summary["packets"]
                result["packets_dropped"] = summary["packets_dropped"]
            result["output_bytes"] = out.stat().st_size
            out.unlink(missing_ok=True)
            Path(f"{out}.session.jsonl").unlink(missing_ok=True)
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
    parser.add_argument("--json", help="also write results as JSON here")
    parser.add_argument("--modes", default=",".join(dict.fromkeys(m for ms in MODES.values() for m in ms)),
                        help="comma-separated subset of each module's modes (count is always run)")  # fmt: skip
    parser.add_argument("--modules", default=",".join(TARGETS),
                        help=f"modules to measure, comma-separated (default {','.join(TARGETS)})")  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root")
    chosen = [m for m in args.modules.split(",") if m]
    unknown = [m for m in chosen if m not in TARGETS]
    if unknown:
        sys.exit(
            f"bench: no benchmark target for {', '.join(unknown)}; choose from {', '.join(TARGETS)}"
        )
    reader = build("tls")
    targets = {m: build(m) for m in chosen}
    global COUNT_IMAGE
    COUNT_IMAGE = count_image()
    results = []
    with tempfile.TemporaryDirectory(prefix="ecap-bench-") as tmp:
        env = Env(Path(tmp))
        for size, count in SIZES.items():
            count = count // 10 if args.quick else count
            # the modules side by side for each size: the machine is noisy, ratios
            # taken minutes apart would not compare
            for name in chosen:
                module = modules.get(name)
                wanted = [m for m in MODES[name] if m in args.modes.split(",") or m == "count"]
                row = {
                    m: run_once(reader, targets[name], module, env, m, size, count, args.ring_size)
                    for m in wanted
                }  # fmt: skip
                results.append(row)
                floor = row["count"]["calls_per_s"]
                print(f"\n{name}: {size // 1024} KiB x {count} writes:")
                for mode, r in row.items():
                    extra = ""
                    if "lost_events" in r:
                        extra = f"  lost {r['lost_events']}, calls captured {r['captured_writes']}"
                    if r.get("capture_peak_rss_mb"):
                        extra += f", capture peak RSS {r['capture_peak_rss_mb']:.0f} MiB"
                    if "packets" in r:
                        extra += f", {r['packets']} packets ({r['packets_dropped']} dropped)"
                    if "output_bytes" in r:
                        extra += f", output {r['output_bytes'] / 1e6:.0f} MB"
                    print(
                        f"  {mode:9s} {r['calls_per_s']:>10.0f} calls/s {r['mb_per_s']:>8.1f} MB/s"
                        f"  x{r['calls_per_s'] / floor:.2f} of count-only{extra}"
                    )
                if "ecap" in row and "bpftrace" in row:
                    ratio = row["ecap"]["calls_per_s"] / row["bpftrace"]["calls_per_s"]
                    print(f"  ecap / bpftrace: x{ratio:.2f}")
                if "ecap-pcapng" in row and "ecap-text" in row:
                    ratio = row["ecap-pcapng"]["calls_per_s"] / row["ecap-text"]["calls_per_s"]
                    print(f"  pcapng / text: x{ratio:.2f}")
        first = time_to_first_event(reader, env)
        print(
            f"\nattached {first['attached_s']:.2f} s after launch; first event at "
            f"{first['first_event_s']:.2f} s; idle capture peak RSS "
            f"{first['idle_peak_rss_mb']:.0f} MiB"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": results, "startup": first}, indent=2))


if __name__ == "__main__":
    main()
