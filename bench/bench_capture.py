"""Benchmark of ``ecap-audit capture`` against the issue-11 targets (``make bench``).

Not part of the tests. Everything is measured side by side in one run and printed
as ratios, because the machine is shared (its two vCPUs also run other engineers'
test suites): an absolute figure from another minute is not comparable.

A target program per capture module (``BENCH_MODULES``) writes N back-to-back
calls over TLS to the same local reader (bench/tls_bench.c's server): ``tls``,
bench/tls_bench.c (OpenSSL ``SSL_write``; 1, 16 and 64 KiB); ``gnutls``,
bench/gnutls_bench.c (``gnutls_record_send``, at most 16 KiB a call, so a 64 KiB
write is four calls; 1 and 64 KiB); ``gotls``, bench/gotls_bench.go (Go's
``(*tls.Conn).Write``, built with ``go build``; 1 and 64 KiB). For each round and
size, the modules take turns, and each module's modes run one after the other
(``MODES``; each module runs the subset in its ``BenchModule.modes``):

  none        no probe at all
  count       a count-only uprobe exactly where the module puts its data functions'
              entry probes: the floor any uprobe-based tool pays (bench/count.bpf.c,
              attached as ecap attaches: uprobe_multi, PID-scoped)
  count-ret   the same with a probe on each return as well, as the module probes it:
              a uretprobe (tls, gnutls) or a uprobe on every RET instruction (gotls:
              Go code never gets a uretprobe). Any tool that needs the real byte
              count, or the data a read returns, pays at least this
  kernel      ecap's kernel side (its programs and probes; the 1 GiB ring is not read
              during the run) in its steady state: syscall tracepoints detached
  kernel+sys  the same with the syscall tracepoints attached, as while some
              connection's socket is still unknown
  text        ``ecap-audit capture MODULE --format text`` (tls): HTTP-aware rendering
  jsonl       ``ecap-audit capture MODULE --format jsonl``: every byte decoded and written
  pcapng      ``--format pcapng`` (tls): the connection's packets from the packet tap
              into a pcapng file; the probes copy no plaintext (its CPU figure is per
              call made, there being no events)
  raw         ``ecap-audit capture MODULE --format raw``: the records written verbatim
  raw-256M    the same with ``--ring-size 256``: a ring that absorbs longer stalls of
              the capture process (which shares two vCPUs with the target, its reader
              and whatever else runs)
  bpftrace    a bpftrace one-liner copying 64 bytes per call (for comparison)

The ecap captures get one warm-up call and then wait until their syscall
tracepoints are detached (``SYSCALLS_IDLE_AFTER``), as in any capture that runs
for more than a few seconds; for them the capture process's CPU time per event
(between the start of the run and its exit) and its peak RSS are recorded too.

Then, for every module, the in-kernel time per program run (``BPF_ENABLE_STATS``,
1 KiB, a run of its own), and for ``tls`` alone (``EXTRAS_MODULE``):

  bystanders  per-syscall CPU of a process ecap does *not* target (``dd bs=1``: one
              read and one write per byte) with no capture, with ecap's kernel side
              holding the syscall tracepoints, and under a real capture once they
              are detached; interleaved rounds
  startup     launch of ``ecap-audit capture`` → its "session ...; Ctrl-C to stop"
              line (hooks attached) and → the first event in the file; idle peak RSS

Targets (issue 11): bystanders ≤ +5 %; kernel ≥ 0.85 × count at 1 KiB and ≥ 0.95 ×
at 64 KiB; jsonl ≥ 0.75 × count at 1 KiB; 0 records lost in raw mode at 16 and
64 KiB; peak RSS ≤ 80 MiB plus the ring; launch → attached ≤ 1 s. CPU per event
in user space: bench/bench_consumer.py (and the live figure here).

Adding a module: a target speaking tls_bench.c's client protocol and a
``BenchModule`` entry; run with ``--modules NAME``. ``--quick-extra`` runs a tenth
of the calls for every module but tls (the extra modules' ratios, cheaper).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ecap.authz import keys, request, token  # noqa: E402
from ecap.capture import modules  # noqa: E402
from ecap.capture.engine import LIVENESS_EVERY, SYSCALLS_IDLE_AFTER  # noqa: E402
from ecap.capture.kernel import DEFAULT_RING_MB, SYSCALL_TRACEPOINTS, KernelSide  # noqa: E402
from ecap.capture.modules.interface import CaptureModule, HookTarget, Probe  # noqa: E402
from ecap.detect import bpfsys  # noqa: E402
from ecap.ebpf import attach, loader  # noqa: E402
from tests.go_programs import build_go  # noqa: E402
from tests.tls_helpers import make_cert  # noqa: E402

OUT = REPO / "bench" / "out"
ECAP = str(Path(sys.executable).parent / "ecap-audit")
SIZES = {1024: 200_000, 16 * 1024: 40_000, 64 * 1024: 10_000}
TICKS = os.sysconf("SC_CLK_TCK")
SETTLE = SYSCALLS_IDLE_AFTER + 2 * LIVENESS_EVERY + 0.3
"""After a capture's warm-up call: its syscall tracepoints have been detached."""
FORMATS = ("text", "jsonl", "pcapng", "raw")
"""The output formats the benchmark token grants."""
KERNEL_RING_MB = 1024
"""The kernel-only modes' ring: big enough that nothing is lost with no reader."""


@dataclass(frozen=True)
class BenchModule:
    """How to benchmark one capture module: its target program and what to run.

    The count-only floor probes exactly where the module puts its data probes
    (``data_probes``): the entries of its plaintext functions, and for ``count-ret``
    their returns as the module probes them (a uretprobe, or for Go code a uprobe
    on every RET instruction)."""

    name: str
    source: str
    """A file in bench/ speaking tls_bench.c's client protocol: ``.c`` (gcc) or
    ``.go`` (go build). The reader is always tls_bench.c's server."""
    link: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    """Files that must exist to build the target (library headers)."""
    client: tuple[str, ...] = ("client",)
    """The target's arguments before PORT SIZE COUNT."""
    sizes: tuple[int, ...] = tuple(SIZES)
    modes: tuple[str, ...] = ("none", "count", "count-ret", "kernel", "jsonl", "raw")
    """The modes run by default (``--modes`` narrows them)."""
    bpftrace: str | None = None
    """A bpftrace program copying 64 bytes per call, ``{lib}`` for the library path."""


KIB = 1024
BENCH_MODULES = {
    "tls": BenchModule(
        "tls", "tls_bench.c", ("-lssl", "-lcrypto"), ("/usr/include/openssl/ssl.h",),
        modes=("none", "count", "count-ret", "kernel", "kernel+sys", "text", "jsonl", "pcapng",
               "raw", "raw-256M", "bpftrace"),
        bpftrace='uprobe:{lib}:SSL_write {{ printf("%r\\n", buf(arg1, 64)); }} '
                 'uprobe:{lib}:SSL_read {{ printf("%r\\n", buf(arg1, 64)); }}',
    ),
    "gnutls": BenchModule(
        "gnutls", "gnutls_bench.c", ("-lgnutls",), ("/usr/include/gnutls/gnutls.h",),
        sizes=(KIB, 64 * KIB),
    ),
    "gotls": BenchModule("gotls", "gotls_bench.go", client=(), sizes=(KIB, 64 * KIB)),
}  # fmt: skip
EXTRAS_MODULE = "tls"
"""The module the costly extras run on: bystanders, start-up, idle RSS."""


# -- building ---------------------------------------------------------------------------
def build_target(bench: BenchModule) -> Path:
    src = REPO / "bench" / bench.source
    if src.suffix == ".go":
        if shutil.which("go") is None:
            sys.exit(f"bench: building {src.name} needs Go (apt-get install golang-go)")
        return build_go(src.read_text(), src.stem)  # cached by source and toolchain
    OUT.mkdir(parents=True, exist_ok=True)
    binary = OUT / src.stem
    if not binary.exists() or binary.stat().st_mtime < src.stat().st_mtime:
        missing = [p for p in bench.needs if not Path(p).exists()]
        if shutil.which("gcc") is None or missing:
            sys.exit(f"bench: building {src.name} needs gcc and {', '.join(bench.needs)}")
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(src), *bench.link], check=True)
    return binary


@dataclass(frozen=True)
class Target:
    """A module's built target program and the reader it writes to."""

    bench: BenchModule
    client: Path
    reader: Path

    def pair(self, env: Env, size: int, count: int) -> Pair:
        return Pair(self.reader, env, [str(self.client), *self.bench.client], str(size),
                    str(count))  # fmt: skip


def data_probes(target: HookTarget, module: CaptureModule) -> tuple[list[int], list[Probe]]:
    """(entry offsets, return probes) of the module's data functions, as it attaches
    them: what the count-only floor counts."""
    hooks = {h.function: h for h in module.hooks if h.plaintext and h.kind in ("write", "read")}
    entries, returns = [], []
    for p in target.probes:
        hook = hooks.get(p.function)
        if hook is None:
            continue
        if not p.retprobe and p.program == hook.program:
            entries.append(p.offset)
        elif p.retprobe or p.program == hook.at_returns:
            returns.append(p)
    return entries, returns


def count_image() -> loader.Image:
    """bench/count.bpf.c, built here with the project's own build script."""
    spec = importlib.util.spec_from_file_location("build_bpf", REPO / "scripts" / "build_bpf.py")
    assert spec is not None and spec.loader is not None
    build_bpf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_bpf)
    OUT.mkdir(parents=True, exist_ok=True)
    blob = build_bpf.build(REPO / "bench" / "count.bpf.c", OUT / "count.loader")
    return loader.read_image("count", blob)


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

    def last_summary(self) -> dict[str, Any]:
        """The last capture's summary, from its journal stop entry (every format)."""
        lines = (self.root / "journal.jsonl").read_text().splitlines()
        entries = (json.loads(line) for line in reversed(lines))
        return next(e for e in entries if e["event"] == "capture.stop")["summary"]

    def token_file(self, pid: int, module: str) -> Path:
        req = request.build([pid], modules=[module], modes=list(FORMATS),
                            reason="benchmark")  # fmt: skip
        text = token.issue(
            req, self.key, operator="bench", reason="benchmark", ttl_seconds=3600, issuer="bench"
        )
        path = self.root / f"token-{pid}.jwt"
        path.write_text(text)
        return path


# -- processes --------------------------------------------------------------------------
class Pair:
    """The target (client) and its TLS reader (server)."""

    def __init__(self, reader: Path, env: Env, client: list[str], *args: str) -> None:
        """``client``: the target's command up to its PORT argument; ``args`` after it."""
        portfile = env.root / "port"
        portfile.unlink(missing_ok=True)
        self.server = subprocess.Popen(
            [str(reader), "server", str(env.cert), str(env.keyfile), str(portfile)],
            stdout=subprocess.DEVNULL,
        )
        while not portfile.exists():
            time.sleep(0.005)
        self.client = subprocess.Popen(
            [*client, portfile.read_text().strip(), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.client.stdout.readline().strip() != "ready":
            raise RuntimeError("the benchmark target did not start")

    def say(self, line: str) -> str:
        self.client.stdin.write(line + "\n")
        self.client.stdin.flush()
        return self.client.stdout.readline().strip()

    def close(self) -> None:
        for proc in (self.client, self.server):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


class Capture:
    """One ``ecap-audit capture`` process: launched, attached, measured, stopped."""

    def __init__(self, env: Env, module: str, pid: int, fmt: str, out: Path,
                 ring_mb: int | None = None) -> None:  # fmt: skip
        cmd = [ECAP, "capture", module, "--pid", str(pid), "--token",
               str(env.token_file(pid, module)), "--format", fmt, "--output", str(out)]  # fmt: skip
        if ring_mb is not None:
            cmd += ["--ring-size", str(ring_mb)]
        self.out = out
        self.lines: list[str] = []
        self._attached = threading.Event()
        self.launched = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env.env, stderr=subprocess.PIPE, text=True)
        self.attached_at: float | None = None
        self.peak = PeakRss(self.proc.pid)
        threading.Thread(target=self._read_status, daemon=True).start()
        if not self._attached.wait(30) or self.attached_at is None:
            self.stop()
            raise RuntimeError(f"capture {module} --format {fmt} did not start "
                               f"(exit {self.proc.returncode}): {''.join(self.lines)[-800:]}")  # fmt: skip

    def _read_status(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if "Ctrl-C to stop" in line and self.attached_at is None:
                self.attached_at = time.monotonic() - self.launched
                self._attached.set()
        self._attached.set()

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far (user, system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / TICKS, int(fields[12]) / TICKS

    def wait(self, timeout: float = 600) -> tuple[float, float]:
        """Wait for it to exit by itself; returns its total CPU seconds (user, system)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by Popen.poll(): its CPU time is gone
                return 0.0, 0.0
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                return usage.ru_utime, usage.ru_stime
            if time.monotonic() > deadline:
                self.proc.kill()
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGINT, as an operator's Ctrl-C (nothing if it already exited and was reaped)."""
        if self.proc.returncode is None:
            self.proc.send_signal(2)
            self.wait(60)


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


# -- one timed run per mode ---------------------------------------------------------------
@dataclass
class Run:
    target: Target
    module: CaptureModule
    env: Env
    pair: Pair
    size: int
    count: int
    ring_mb: int
    count_image: loader.Image
    profile: bool = False
    """Sample the ecap captures with py-spy (when installed) and print where they spend time."""
    stats: bool = False
    """Record each BPF program's run count and run time (BPF_ENABLE_STATS must be on)."""
    result: dict[str, Any] = field(default_factory=dict)


Mode = Callable[[Run], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def mode_none(run: Run) -> Iterator[None]:
    yield


def _count(ret: bool) -> Mode:
    @contextlib.contextmanager
    def mode(run: Run) -> Iterator[None]:
        counter = loader.load(run.count_image)
        links: list[attach.Attachment] = []
        try:
            hook = run.module.resolve(run.pair.client.pid, {})
            entries, returns = data_probes(hook, run.module)
            probes = [("count_call", False, entries)]
            if ret:  # uretprobes at the entries, or uprobes on the RET instructions (Go)
                at_entries = [p.offset for p in returns if p.retprobe]
                at_rets = [p.offset for p in returns if not p.retprobe]
                probes += [("count_return", True, at_entries), ("count_call", False, at_rets)]
            for program, retprobe, offsets in probes:
                if offsets:
                    links.append(attach.uprobe_multi(counter.prog_fd(program), str(hook.path),
                                                     offsets, [0] * len(offsets),
                                                     run.pair.client.pid, retprobe=retprobe))  # fmt: skip
            before = program_runs(counter.prog_fds) if run.stats else {}
            yield
            values = counter.map("calls").lookup_all(bytes(4)) or []
            run.result["counted"] = sum(int.from_bytes(v[:8], "little") for v in values)
            if run.stats:
                run.result["programs"] = runs_since(before, program_runs(counter.prog_fds))
        finally:
            attach.detach_all(links)
            counter.close()

    return mode


def _kernel(syscalls: bool) -> Mode:
    @contextlib.contextmanager
    def mode(run: Run) -> Iterator[None]:
        kernel = KernelSide(run.module, ring_mb=KERNEL_RING_MB)
        try:
            kernel.authorize_pids([run.pair.client.pid])
            kernel.attach_tracepoints()
            kernel.syscalls(syscalls)
            kernel.attach(run.module.resolve(run.pair.client.pid, {}))
            run.pair.say("w")
            before = program_runs(kernel.obj.prog_fds) if run.stats else {}
            yield
            run.result["lost_events"] = kernel.stats()["lost_events"]
            if run.stats:
                run.result["programs"] = runs_since(before, program_runs(kernel.obj.prog_fds))
        finally:
            kernel.close()

    return mode


def _ecap(fmt: str, ring_mb: int | None = None) -> Mode:
    """A capture with ``--format fmt`` (and ``--ring-size ring_mb``, else the run's)."""

    @contextlib.contextmanager
    def mode(run: Run) -> Iterator[None]:
        out = OUT / f"capture-{run.module.name}-{run.size}.{fmt}"
        sidecar = Path(f"{out}.session.jsonl")  # pcapng's session record
        out.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        ring = ring_mb or run.ring_mb
        cap = Capture(run.env, run.module.name, run.pair.client.pid, fmt, out, ring)
        try:
            run.pair.say("w")
            time.sleep(max(0.0, SETTLE - (time.monotonic() - cap.launched - cap.attached_at)))
            user0, sys0 = cap.cpu()
            spy = (
                start_profile(cap.proc.pid, f"{run.module.name}-{fmt}", run.size)
                if run.profile
                else None
            )
            yield
            user, system = cap.wait()  # the target exits after its calls; the capture follows
            if spy is not None:
                run.result["profile"] = finish_profile(*spy)
            summary = run.env.last_summary()
            events = summary["events"]["write"]
            # pcapng mode copies no plaintext (no events): its CPU is per call made
            per = run.count + 1 if fmt == "pcapng" else max(1, events)
            if "packets" in summary:
                run.result.update(packets=summary["packets"],
                                  packets_dropped=summary["packets_dropped"])  # fmt: skip
            run.result.update(lost_events=summary["lost_events"], captured=events - 1,
                              user_us_per_event=(user - user0) / per * 1e6,
                              sys_us_per_event=(system - sys0) / per * 1e6,
                              peak_rss_mib=cap.peak.result(), ring_mib=ring,
                              output_mib=out.stat().st_size / 2**20)  # fmt: skip
        finally:
            cap.stop()
            out.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)

    return mode


def start_profile(pid: int, what: str, size: int) -> tuple[subprocess.Popen, Path] | None:
    """py-spy sampling the capture process until it exits (raw collapsed stacks)."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("bench: --profile needs py-spy (pip install py-spy); not profiling")
        return None
    path = OUT / f"profile-{what}-{size}.txt"
    proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                             "--output", str(path), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.3)
    return proc, path


def finish_profile(proc: subprocess.Popen, path: Path, top: int = 12) -> list[tuple[str, float]]:
    """Share of samples per function, by own time (the innermost frame)."""
    proc.wait(60)
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + int(n)
        total += int(n)
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    return [(name, n / max(1, total)) for name, n in ranked]


@contextlib.contextmanager
def mode_bpftrace(run: Run) -> Iterator[None]:
    lib = run.module.resolve(run.pair.client.pid, {}).display_path
    program = run.target.bench.bpftrace
    assert program is not None
    tool = subprocess.Popen(
        ["bpftrace", "-p", str(run.pair.client.pid), "-e", program.format(lib=lib)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = {"lines": 0, "lost": 0}
    ready = threading.Event()

    def pump() -> None:
        for line in tool.stdout:
            if line.startswith("Attaching"):
                ready.set()
            elif m := re.match(r"Lost (\d+) events", line):
                seen["lost"] += int(m.group(1))
            else:
                seen["lines"] += 1
        ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        ready.wait(30)
        time.sleep(0.5)
        yield
        time.sleep(1.0)
        tool.send_signal(2)
        _, err = tool.communicate(timeout=60)
        reader.join(10)
        lost = seen["lost"] + sum(int(n) for n in re.findall(r"Lost (\d+) events", err))
        run.result.update(lost_events=lost, captured=seen["lines"])
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()


def program_runs(prog_fds: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Program name → (run count, run time ns) so far (kept while stats are enabled)."""
    out = {}
    for name, fd in prog_fds.items():
        info = ctypes.create_string_buffer(256)
        bpfsys.info_by_fd(fd, info)
        run_time, run_cnt = struct.unpack_from("<QQ", info, 192)
        out[name] = (run_cnt, run_time)
    return out


def runs_since(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Runs and mean ns per run of each program that ran in between."""
    out = {}
    for name, (cnt, ns) in after.items():
        runs, spent = cnt - before[name][0], ns - before[name][1]
        if runs:
            out[name] = {"runs": runs, "ns_per_run": spent / runs}
    return out


def program_costs(target: Target, env: Env, image: loader.Image, count: int) -> dict[str, dict]:
    """In-kernel time per program run at 1 KiB (BPF_ENABLE_STATS), separately from the
    throughput rounds: the statistics themselves cost two clock reads per run."""
    stats_fd = bpfsys.enable_stats()
    wanted = ("count", "count-ret", "kernel", "kernel+sys")
    try:
        return {
            mode: run_mode(mode, target, env, KIB, count, 32, image, stats=True)
            for mode in wanted
            if mode in target.bench.modes
        }
    finally:
        os.close(stats_fd)


MODES: dict[str, Mode] = {
    "none": mode_none,
    "count": _count(ret=False),
    "count-ret": _count(ret=True),
    "kernel": _kernel(syscalls=False),
    "kernel+sys": _kernel(syscalls=True),
    "text": _ecap("text"),
    "jsonl": _ecap("jsonl"),
    "pcapng": _ecap("pcapng"),
    "raw": _ecap("raw"),
    "raw-256M": _ecap("raw", ring_mb=256),
    "bpftrace": mode_bpftrace,
}


def run_mode(name: str, target: Target, env: Env, size: int, count: int, ring_mb: int,
             image: loader.Image, profile: bool = False,
             stats: bool = False) -> dict[str, Any]:  # fmt: skip
    pair = target.pair(env, size, count)
    run = Run(target, modules.get(target.bench.name), env, pair, size, count, ring_mb, image,
              profile, stats)  # fmt: skip
    try:
        with MODES[name](run):
            pair.client.stdin.write("go\n")
            pair.client.stdin.flush()
            seconds = int(pair.client.stdout.readline()) / 1e9
            pair.client.wait()
        run.result.update(mode=name, seconds=seconds, calls_per_s=count / seconds,
                          mb_per_s=size * count / seconds / 1e6)  # fmt: skip
        return run.result
    finally:
        pair.close()


# -- bystanders and start-up ----------------------------------------------------------------
def dd_cpu_ns_per_syscall(n: int) -> float:
    """CPU (user + system) per system call of ``dd bs=1``: a read and a write per byte."""
    proc = subprocess.Popen(
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={n}"], stderr=subprocess.DEVNULL
    )
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return (usage.ru_utime + usage.ru_stime) / (2 * n) * 1e9


def syscall_links(pid: int) -> int:
    """How many raw tracepoint links on sys_enter/sys_exit a process holds (fdinfo)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            if re.search(r"^tp_name:\s+sys_(enter|exit)$", fd.read_text(), re.M):
                count += 1
    return count


def syscall_hooks_on_host() -> int:
    """BPF programs on the host's syscall tracepoints (raw tracepoint links and perf
    tracepoints). Other engineers' tests start captures that hold them for their
    first seconds: a bystander sample is only kept when no one else's was there."""
    programs = set()
    for what in ("link", "perf"):  # a raw tracepoint link is listed by both
        out = subprocess.run(["bpftool", "-j", what, "list"], capture_output=True, text=True)
        for entry in json.loads(out.stdout or "[]"):
            name = str(entry.get("tp_name") or entry.get("tracepoint") or "")
            if re.match(r"sys_(enter|exit)", name):
                programs.add(entry.get("prog_id"))
    return len(programs)


def own_syscall_links(kernel: KernelSide) -> int:
    """How many syscall tracepoint links ``kernel`` holds when they are attached."""
    sections = kernel.obj.image.program_sections.values()
    return (
        sum(s.split("/", 1)[-1] in SYSCALL_TRACEPOINTS for s in sections) * kernel.syscalls_attached
    )


def bystander_sample(n: int, ours: int) -> tuple[float, bool]:
    """(dd's ns per syscall, whether no foreign syscall hook was attached meanwhile);
    retried a few times while one is."""
    for _ in range(6):
        before = syscall_hooks_on_host()
        value = dd_cpu_ns_per_syscall(n)
        if before == ours == syscall_hooks_on_host():
            return value, True
        time.sleep(1.0)
    return value, False


def bystanders(target: Target, env: Env, rounds: int, n: int) -> dict:
    """Per-syscall CPU of an untargeted ``dd`` in each state, the states taking
    turns round by round (in a rotating order). The target is connected but idle
    in every state, so that what is measured is what the hooks cost a bystander,
    not the CPU a busy capture takes from the machine's two vCPUs."""
    module = modules.get(target.bench.name)
    states = ["none", "kernel+sys", "capture"]
    samples: dict[str, list[tuple[float, bool]]] = {state: [] for state in states}
    pair = target.pair(env, 1, 1)
    try:
        for r in range(rounds):
            for state in states[r % 3 :] + states[: r % 3]:
                if state == "none":
                    samples[state].append(bystander_sample(n, 0))
                elif state == "kernel+sys":
                    kernel = KernelSide(module)
                    try:
                        kernel.authorize_pids([pair.client.pid])
                        kernel.attach_tracepoints()  # with the syscall tracepoints
                        kernel.attach(module.resolve(pair.client.pid, {}))
                        samples[state].append(bystander_sample(n, own_syscall_links(kernel)))
                    finally:
                        kernel.close()
                else:
                    out = OUT / "bystander.jsonl"
                    cap = Capture(env, module.name, pair.client.pid, "jsonl", out)
                    try:
                        time.sleep(SETTLE)  # no call with an unknown socket: detached
                        if syscall_links(cap.proc.pid):
                            raise RuntimeError("the capture kept its syscall tracepoints")
                        samples[state].append(bystander_sample(n, 0))
                    finally:
                        cap.stop()
                        out.unlink(missing_ok=True)
    finally:
        pair.close()
    out = {}
    for state, got in samples.items():
        clean = [v for v, ok in got if ok] or [v for v, _ in got]
        out[state] = {"samples_ns": [v for v, _ in got], "clean": [ok for _, ok in got],
                      "median_ns": statistics.median(clean)}  # fmt: skip
    return out


def startup(target: Target, env: Env, runs: int) -> dict:
    """Launch → attached (the status line) and → first event, with a target writing
    every millisecond (tls_bench.c's ``trickle``); the idle capture's peak RSS."""
    attached, first, rss = [], [], []
    for i in range(runs):
        pair = Pair(target.reader, env, [str(target.client), "trickle"])
        out = OUT / f"first-event-{i}.jsonl"
        out.unlink(missing_ok=True)
        try:
            cap = Capture(env, target.bench.name, pair.client.pid, "jsonl", out)
            attached.append(cap.attached_at)
            while time.monotonic() - cap.launched < 30:
                if out.exists() and b'"type":"event"' in out.read_bytes():
                    first.append(time.monotonic() - cap.launched)
                    break
                time.sleep(0.005)
            time.sleep(1.0)
            cap.stop()
            rss.append(cap.peak.result())
        finally:
            pair.close()
            out.unlink(missing_ok=True)
    return {"attached_s": attached, "first_event_s": first, "idle_peak_rss_mib": rss}


# -- report -------------------------------------------------------------------------------
def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def span(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}–{fmt.format(hi)}"


def ratios(rounds: list[dict], size: int, mode: str, base: str = "count") -> list[float]:
    """``mode``'s throughput over ``base``'s, one value per round that ran both."""
    return [r[size][mode]["calls_per_s"] / r[size][base]["calls_per_s"] for r in rounds
            if size in r and mode in r[size] and base in r[size]]  # fmt: skip


def print_module(name: str, rounds: list[dict], costs: dict) -> None:
    """Every mode of one module, size by size, with its lost records, CPU and RSS."""
    for size in rounds[0]:
        calls = next(iter(rounds[0][size].values()))["count"]
        print(f"\n{name}: {size // KIB} KiB × {calls} calls "
              f"(ratio to count-only, per round):")  # fmt: skip
        for mode in rounds[0][size]:
            rs = ratios(rounds, size, mode)
            cps = [r[size][mode]["calls_per_s"] for r in rounds]
            extra = ""
            lost = [r[size][mode]["lost_events"] for r in rounds if "lost_events" in r[size][mode]]
            if lost:
                extra += f"  lost {', '.join(map(str, lost))}"
            dropped = [r[size][mode]["packets_dropped"] for r in rounds
                       if "packets_dropped" in r[size][mode]]  # fmt: skip
            if dropped:
                extra += f"  packets dropped {', '.join(map(str, dropped))}"
            cpu = [r[size][mode]["user_us_per_event"] for r in rounds
                   if "user_us_per_event" in r[size][mode]]  # fmt: skip
            if cpu:
                system = [r[size][mode]["sys_us_per_event"] for r in rounds]
                extra += f"  capture CPU/event user {span(cpu)} µs, system {span(system)} µs"
            rss = [r[size][mode]["peak_rss_mib"] for r in rounds
                   if r[size][mode].get("peak_rss_mib")]  # fmt: skip
            if rss:
                extra += f"  peak RSS {span(rss, '{:.0f}')} MiB"
            print(f"  {mode:10s} {span(cps, '{:.0f}'):>15} calls/s  ×{span(rs)}{extra}")
        pcapng = ratios(rounds, size, "pcapng", "text")
        if pcapng:
            print(f"  pcapng / text: ×{span(pcapng)}")
    for size in rounds[0]:
        for mode in ("text", "jsonl", "pcapng", "raw"):
            prof = rounds[-1][size].get(mode, {}).get("profile")
            if prof:
                print(f"\nwhere the {name} {mode} capture spends its time, {size // KIB} KiB "
                      "(py-spy, share of samples by own time):")  # fmt: skip
                for fn, share in prof:
                    print(f"  {share * 100:5.1f} %  {fn}")
    print(f"\n{name}: in-kernel time per program run, 1 KiB (BPF_ENABLE_STATS; a run of its own):")
    for mode, r in costs.items():
        progs = ", ".join(f"{prog} {p['ns_per_run']:.0f} ns × {p['runs']}"
                          for prog, p in r.get("programs", {}).items())  # fmt: skip
        print(f"  {mode:10s} {r['calls_per_s']:>8.0f} calls/s  {progs}")


def figures(results: dict[str, list[dict]], by: dict | None, start: dict | None) -> list:
    """The issue-11 figures with their targets (the extras module, and the kernel side
    and jsonl of every module); returns the table."""
    rows: list[tuple[str, str, str, str]] = []
    kib1, kib16, kib64 = KIB, 16 * KIB, 64 * KIB

    def target_row(label: str, values: list[float], target: str, ok: Callable[[float], bool],
                   fmt: str = "{:.2f}", unit: str = "") -> None:  # fmt: skip
        if values:
            rows.append((label, f"{span(values, fmt)}{unit}", target,
                         verdict(ok(statistics.median(values)))))  # fmt: skip

    for name, rounds in results.items():
        target_row(f"{name}: kernel side / count-only, 1 KiB", ratios(rounds, kib1, "kernel"),
                   "≥ 0.85", lambda m: m >= 0.85)  # fmt: skip
        target_row(f"{name}: kernel side / count-only, 64 KiB", ratios(rounds, kib64, "kernel"),
                   "≥ 0.95", lambda m: m >= 0.95)  # fmt: skip
        sys1 = ratios(rounds, kib1, "kernel+sys")
        if sys1:
            rows.append((f"{name}: kernel side, syscall tracepoints attached / count-only, 1 KiB",
                         span(sys1), "-", "-"))  # fmt: skip
        lost1 = [r[kib1]["jsonl"]["lost_events"] for r in rounds if "jsonl" in r.get(kib1, {})]
        e2e = ratios(rounds, kib1, "jsonl")
        if e2e:
            rows.append((f"{name}: jsonl end to end / count-only, 1 KiB", span(e2e), "≥ 0.75",
                         verdict(statistics.median(e2e) >= 0.75 and not any(lost1))))  # fmt: skip
        for fmt, limit in (("jsonl", 4.0), ("raw", 1.0)):
            cpu = [r[kib1][fmt]["user_us_per_event"] for r in rounds if fmt in r.get(kib1, {})]
            target_row(f"{name}: capture user CPU per 1 KiB event, {fmt}, live", cpu,
                       f"≤ {limit:g} µs", lambda m, limit=limit: m <= limit, unit=" µs")  # fmt: skip
        for mode in ("raw", "raw-256M"):
            for size in (kib16, kib64):
                lost = [r[size][mode]["lost_events"] for r in rounds if mode in r.get(size, {})]
                if lost:
                    rows.append((f"{name}: {mode} records lost, {size // KIB} KiB back to back",
                                 ", ".join(map(str, lost)), "0", verdict(not any(lost))))  # fmt: skip
        for size in (kib1, kib16, kib64):
            pcapng = ratios(rounds, size, "pcapng", "text")
            if pcapng:
                rows.append((f"{name}: pcapng / text throughput, {size // KIB} KiB",
                             span(pcapng), "-", "-"))  # fmt: skip
    if by is not None:
        none = by["none"]["median_ns"]
        for state, label in (("capture", "capture running, syscall tracepoints detached"),
                             ("kernel+sys", "syscall tracepoints attached")):  # fmt: skip
            extra = by[state]["median_ns"] / none - 1
            rows.append((f"bystander dd bs=1, per syscall: {label}",
                         f"{extra * 100:+.1f} % ({by[state]['median_ns']:.0f} vs {none:.0f} ns)",
                         "≤ +5 %" if state == "capture" else "-",
                         verdict(extra <= 0.05) if state == "capture" else "-"))  # fmt: skip
    # The kernel maps a ring's data pages twice in a row, all present from the start,
    # so RSS counts the ring twice; what the process itself uses is RSS minus that.
    # pcapng mode maps a packet ring too and holds packets until their keys are judged:
    # its own row.
    for name, rounds in results.items():
        for label, pcapng in (("", False), (", pcapng", True)):
            runs = [r[s][m] for r in rounds for s in r for m in r[s]
                    if r[s][m].get("peak_rss_mib") and (m == "pcapng") == pcapng]  # fmt: skip
            if runs:
                beyond = max((x["peak_rss_mib"] - 2 * x["ring_mib"], x["peak_rss_mib"], x["ring_mib"])
                             for x in runs)  # fmt: skip
                rows.append((f"{name}{label}: capture peak RSS beyond the ring (all runs, bursts)",
                             f"{beyond[0]:.0f} MiB (RSS {beyond[1]:.0f} = 2 × {beyond[2]} ring "
                             f"+ {beyond[0]:.0f})", "≤ 80 MiB", verdict(beyond[0] <= 80)))  # fmt: skip
    if start is not None:
        idle = [x - 2 * DEFAULT_RING_MB for x in start["idle_peak_rss_mib"] if x]
        rows.append(("capture peak RSS beyond the ring, idle", f"{span(idle, '{:.0f}')} MiB",
                     "-", "-"))  # fmt: skip
        att = start["attached_s"]
        rows.append(("launch → attached (status line)", f"{span(att)} s", "≤ 1 s",
                     verdict(max(att) <= 1.0)))  # fmt: skip
        rows.append(("launch → first event written", f"{span(start['first_event_s'])} s",
                     "-", "-"))  # fmt: skip
    return rows


def print_figures(rows: list, rounds: int) -> None:
    width = max(len(f[0]) for f in rows)
    print(f"\nfigures ({rounds} round(s); load average {load_average()}):")
    for name, value, target, ok in rows:
        print(f"  {name:{width}s}  {value:>28s}  {target:>12s}  {ok}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default=",".join(BENCH_MODULES),
                        help=f"comma-separated subset of {', '.join(BENCH_MODULES)} (default: all)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every mode and size")
    parser.add_argument(
        "--ring-size", type=int, default=DEFAULT_RING_MB, help="the captures' ring, MiB"
    )
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated subset of each module's modes")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls, one round")
    parser.add_argument("--quick-extra", action="store_true",
                        help=f"a tenth of the calls for every module but {EXTRAS_MODULE}")  # fmt: skip
    parser.add_argument("--dd-bytes", type=int, default=400_000, help="bytes per dd run")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the ecap captures with py-spy and print where the time goes",
    )
    parser.add_argument("--json", help="also write the results as JSON here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root")
    chosen = [m for m in args.modules.split(",") if m]
    unknown = [m for m in chosen if m not in BENCH_MODULES]
    if unknown:
        sys.exit(f"bench: no benchmark target for {', '.join(unknown)}; "
                 f"choose from {', '.join(BENCH_MODULES)}")  # fmt: skip
    asked = [m for m in args.modes.split(",") if m]
    reader = build_target(BENCH_MODULES["tls"])  # tls_bench.c's server reads for every target
    targets = {name: Target(BENCH_MODULES[name], build_target(BENCH_MODULES[name]), reader)
               for name in chosen}  # fmt: skip
    modes = {}
    for name in chosen:
        bench = BENCH_MODULES[name]
        wanted = [m for m in bench.modes if m in asked or m == "count"]  # count: the ratios' base
        if "bpftrace" in wanted and (bench.bpftrace is None or shutil.which("bpftrace") is None):
            wanted.remove("bpftrace")
        modes[name] = wanted
    rounds = 1 if args.quick else args.rounds
    image = count_image()
    print(f"load average at start {load_average()}; other work on this machine is not stopped")
    results: dict[str, list[dict]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory(prefix="ecap-bench-") as tmp:
        env = Env(Path(tmp))
        for _ in range(rounds):
            # every module's modes for one size in the same minute: the machine is noisy
            rows: dict[str, dict[int, dict[str, dict]]] = {name: {} for name in chosen}
            for size, count in SIZES.items():
                for name, target in targets.items():
                    if size not in target.bench.sizes:
                        continue
                    n = (
                        count // 10
                        if args.quick or (args.quick_extra and name != EXTRAS_MODULE)
                        else count
                    )
                    rows[name][size] = {
                        mode: run_mode(mode, target, env, size, n, args.ring_size, image,
                                       args.profile) | {"count": n}
                        for mode in modes[name]
                    }  # fmt: skip
            for name in chosen:
                results[name].append(rows[name])
        costs = {name: program_costs(target, env, image, 20_000 if args.quick else 100_000)
                 for name, target in targets.items()}  # fmt: skip
        by = start = None
        if EXTRAS_MODULE in targets:
            extras = targets[EXTRAS_MODULE]
            by = bystanders(extras, env, 6 if not args.quick else 1, args.dd_bytes)
            start = startup(extras, env, 5 if not args.quick else 2)
    for name in chosen:
        print_module(name, results[name], costs[name])
    table = figures(results, by, start)
    print_figures(table, rounds)
    if args.json:
        doc = {"modules": {name: [{str(s): r for s, r in row.items()} for row in results[name]]
                           for name in chosen},
               "bystanders": by, "startup": start, "program_costs": costs,
               "figures": [dict(zip(("figure", "value", "target", "verdict"), f, strict=True))
                           for f in table]}  # fmt: skip
        Path(args.json).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
