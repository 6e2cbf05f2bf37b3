"""``ecap-detect watch``: the scan, re-run the moment something may have changed.

What wakes the watcher up (one ``select`` loop, no threads):

* **kernel events** — ``bpf/watch_events.bpf.c`` on the ``sys_exit`` raw
  tracepoint reports every bpf(2) attach/detach/pin, every ``perf_event_open``
  and every ``PERF_EVENT_IOC_SET_BPF``, with the caller's pid (ecap.detect.watch_bpf);
* **tracefs writes** — inotify on ``uprobe_events``/``kprobe_events``, on the
  ``enable`` file of every dynamic event the last scan saw, and on the bpffs
  mount points (pins removed with ``rm``);
* **owner exits** — a pidfd for each process owning an alerted finding, so its
  resolution is reported when it exits, not at the next rescan;
* **the rescan timer** (``--rescan``), for anything the event path missed;
* **signals** — SIGHUP reloads the configuration (and trust: every scan
  verifies sessions against the trust store afresh) and reopens the output
  file; SIGTERM/SIGINT stop with a final record.

A wake-up schedules one scan shortly after (bursts coalesce), and at most one
event-driven scan per ``MIN_GAP``; each scan is compared with what was already
alerted (:class:`ecap.detect.alerts.AlertState`), so only new, changed and
resolved findings produce records.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import time
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, BinaryIO

from ecap import host
from ecap.detect import alerts, ocsf, watchers
from ecap.detect.findings import SEVERITIES
from ecap.detect.scan import WALKS, ScanOptions, run_scan
from ecap.errors import EnvironmentNotReady, UsageError

FORMATS = ("ecap", "ocsf")
DEBOUNCE = 0.05
"""Seconds from a wake-up to its scan: the rest of a burst (bcc's perf_event_open
then SET_BPF, a tool attaching ten probes) lands in the same scan."""
MIN_GAP = 0.5
"""Seconds between two event-driven scans: a storm of attachments costs at most
one scan per half second, and an alert still comes well inside a second."""
MAX_EVENTS_IN_RECORD = 16
AUTHORIZATION_GRACE = 2.0
"""Seconds a new critical plaintext hook is held back when the gate has granted its
owner a capture: ``ecap-audit capture`` attaches first and journals
``capture.start`` and registers its session a few milliseconds later, and an
authorized capture must never be alerted as critical. A hold ends at the next
scan that sees the session (its registration wakes the watcher) or after the
grace, when the critical alert goes out."""


@dataclass(frozen=True)
class WatchOptions:
    """What the watcher does; the TOML config file (``--config``) uses these names."""

    json: str | None = None
    """JSON lines destination: a file (appended, 0600) or ``-`` for stdout."""
    format: str = "ecap"
    """``ecap`` (``ecap.alert/1`` records) or ``ocsf`` (OCSF 1.1.0 events)."""
    syslog: bool = False
    syslog_socket: str = "/dev/log"
    rescan: float = 60.0
    heartbeat: float = 60.0
    min_severity: str = "low"
    walk: str = "auto"
    trust_dir: str | None = None
    journal: str | None = None
    run_dir: str | None = None

    def check(self) -> WatchOptions:
        if self.format not in FORMATS:
            raise UsageError(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.min_severity not in SEVERITIES:
            raise UsageError(
                f"min_severity {self.min_severity!r} is not one of {', '.join(SEVERITIES)}"
            )
        if self.walk not in WALKS:
            raise UsageError(f"walk {self.walk!r} is not one of {', '.join(WALKS)}")
        for name in ("rescan", "heartbeat"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 1 <= value <= 86400:
                raise UsageError(f"{name} {value!r}: give seconds between 1 and 86400")
        if not self.json and not self.syslog:
            return replace(self, json="-")
        return self


def load_config(path: Path | None, overrides: dict[str, Any]) -> WatchOptions:
    """Defaults, then the TOML file, then ``overrides`` (the command line), checked."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"--config {path}: {exc}", hint="fix the file (TOML, keys as in --help)"
            ) from exc
        known = {f.name for f in fields(WatchOptions)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(
                f"--config {path}: unknown key(s) {', '.join(unknown)}",
                hint=f"known keys: {', '.join(sorted(known))}",
            )
        values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return WatchOptions(**values).check()
    except TypeError as exc:
        raise UsageError(f"watch options: {exc}") from exc


class _Inotify:
    """Just enough inotify (through libc) to know that watched files changed."""

    _MODIFY, _CREATE, _DELETE, _MOVED = 0x2, 0x100, 0x200, 0xC0

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._paths: set[str] = set()

    def watch(self, path: str | Path, *, directory: bool = False) -> None:
        key = str(path)
        if key in self._paths:
            return
        mask = (self._CREATE | self._DELETE | self._MOVED) if directory else self._MODIFY
        if self._libc.inotify_add_watch(self.fd, os.fsencode(key), mask) >= 0:
            self._paths.add(key)

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):
                pass

    def forget(self, path: str) -> None:
        """Let ``watch`` add it again (its file may have been removed and re-created)."""
        self._paths.discard(path)

    def close(self) -> None:
        os.close(self.fd)


class _Output:
    """The destinations: JSON lines (file or stdout) and syslog, in one format."""

    def __init__(self, options: WatchOptions, host_info: dict, version: str) -> None:
        self.options = options
        self.host = host_info
        self.version = version
        self._file: BinaryIO | None = None
        self._stdout = False
        self._syslog = None
        self.open()

    def open(self) -> None:
        json_to = self.options.json
        if json_to == "-":
            self._stdout = True
        elif json_to:
            from ecap.fsutil import open_append_private

            try:
                fd = open_append_private(json_to, what="--json output")
                self._file = os.fdopen(fd, "ab")
            except OSError as exc:
                raise UsageError(
                    f"--json {json_to}: cannot open for appending ({exc.strerror})",
                    hint="choose a writable path",
                ) from None
        if self.options.syslog:
            from ecap.detect.syslog import SyslogSender

            try:
                self._syslog = SyslogSender(self.options.syslog_socket)
            except OSError as exc:
                raise EnvironmentNotReady(
                    f"--syslog: cannot connect to {self.options.syslog_socket} ({exc.strerror})",
                    hint="start rsyslog or systemd-journald, or give --syslog-socket PATH",
                ) from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._stdout = False
        if self._syslog is not None:
            self._syslog.close()
            self._syslog = None

    @property
    def syslog_dropped(self) -> int:
        return self._syslog.dropped if self._syslog is not None else 0

    def write(self, record: dict) -> None:
        import json

        body = (
            ocsf.from_alert(record, host=self.host, tool_version=self.version)
            if self.options.format == "ocsf"
            else record
        )
        line = json.dumps(body, separators=(",", ":"), default=str) + "\n"
        if self._stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
        if self._file is not None:
            self._file.write(line.encode())
            self._file.flush()
        if self._syslog is not None:
            from ecap.detect.syslog import record_message

            self._syslog.send(
                record_message(
                    record, body, hostname=self.host["hostname"] or "-", version=self.version
                )
            )


@dataclass
class _Counters:
    alerts: int = 0
    resolutions: int = 0
    errors: int = 0
    kernel_events: int = 0
    scans: dict[str, int] = field(default_factory=dict)


@dataclass
class _Pending:
    """A scan that wake-ups have asked for."""

    at: float
    triggers: list[str]
    since_ns: int
    events: list[dict]


class Watcher:
    """One watch run; :meth:`run` returns when stopped by a signal (or ``max_scans``)."""

    def __init__(
        self,
        options: WatchOptions,
        *,
        config_path: Path | None = None,
        overrides: dict[str, Any] | None = None,
        scan: Callable[[ScanOptions], dict] = run_scan,
    ) -> None:
        self.options = options
        self._config_path = config_path
        self._overrides = overrides or {}
        self._scan_fn = scan
        self._apply_env()
        self.state = alerts.AlertState(min_severity=options.min_severity)
        self.counters = _Counters()
        self._seq = 0
        self._run_id = uuid.uuid4().hex
        self._started = time.time()
        self._stop: str | None = None
        self._reload = False
        self._pidfds: dict[int, int] = {}
        self._pending: _Pending | None = None
        self._holds: dict[str, float] = {}
        self._last_event_scan = 0.0
        self._last_scan: dict | None = None
        from ecap import __version__

        self._version = __version__
        self._host = {
            "hostname": host.hostname(),
            "machine_id": host.machine_id(),
            "kernel": host.kernel_release(),
        }
        self._source = None
        self._programs: list[int] = []
        self._source_note = "not started"
        self._inotify: _Inotify | None = None
        self._tracefs_note: str | None = None
        self.output = _Output(options, self._host, self._version)

    # ---- records -------------------------------------------------------------

    def emit(self, body: dict) -> dict:
        self._seq += 1
        record = {
            "schema": alerts.SCHEMA,
            "time": alerts.iso(),
            "seq": self._seq,
            "host": {"hostname": self._host["hostname"], "machine_id": self._host["machine_id"]},
            "watcher": {"pid": os.getpid(), "run_id": self._run_id, "version": self._version},
            **body,
        }
        self.output.write(record)
        return record

    def _counts(self) -> dict:
        return {
            "active": self.state.active_counts(),
            "alerts": self.counters.alerts,
            "resolutions": self.counters.resolutions,
            "errors": self.counters.errors,
            "scans": dict(self.counters.scans),
            "kernel_events": self.counters.kernel_events,
            "kernel_events_dropped": self._dropped(),
            "syslog_dropped": self.output.syslog_dropped,
        }

    def _dropped(self) -> int:
        if self._source is None:
            return 0
        try:
            return self._source.counters()["dropped"]
        except OSError:
            return 0

    def _sources(self) -> dict:
        return {
            "kernel": self._source_note,
            "tracefs": self._tracefs_note or "inotify",
            "rescan_s": self.options.rescan,
        }

    # ---- setup and teardown --------------------------------------------------

    def _apply_env(self) -> None:
        for name, var in (
            ("trust_dir", "ECAP_TRUST_DIR"),
            ("journal", "ECAP_JOURNAL"),
            ("run_dir", "ECAP_RUN_DIR"),
        ):
            value = getattr(self.options, name)
            if value:
                os.environ[var] = value

    def _start_sources(self) -> None:
        from ecap.detect.watch_bpf import EventSource, EventSourceUnavailable

        try:
            self._source = EventSource()
            prog_ids = self._programs = self._source.program_ids()
            self._source_note = f"bpf raw_tracepoint sys_exit (programs {prog_ids})"
        except (EventSourceUnavailable, OSError) as exc:
            self._source = None
            self._source_note = f"unavailable: {exc}; relying on --rescan"
        if self._source is not None:
            try:
                watchers.remove_stale()
                watchers.register(self._programs)
            except OSError as exc:  # scans elsewhere cannot verify us; we still watch
                self._source_note += f"; not registered ({exc.strerror}: {exc.filename})"
        try:
            self._inotify = _Inotify()
        except OSError as exc:
            self._tracefs_note = f"unavailable: {exc}"
        self._refresh_file_watches(None)

    def _refresh_file_watches(self, doc: dict | None) -> None:
        if self._inotify is None:
            return
        root = host.tracefs_root()
        if root is None:
            self._tracefs_note = "tracefs not mounted (probe writes seen at the next rescan)"
        else:
            self._tracefs_note = None
            for name in ("uprobe_events", "kprobe_events", "dynamic_events"):
                if (root / name).exists():
                    self._inotify.watch(root / name)
            for probe in (doc or {}).get("inventory", {}).get("probes", []):
                if probe.get("source") == "tracefs" and probe.get("event"):
                    enable = root / "events" / probe["event"] / "enable"
                    self._inotify.forget(str(enable))  # the event may be new under an old name
                    self._inotify.watch(enable)
        for mnt in host.mountpoints_of("bpf"):
            self._inotify.watch(mnt, directory=True)
        from ecap import config

        registry = config.sessions_dir()
        if registry.is_dir():  # a capture registering (or ending) its session
            self._inotify.watch(registry, directory=True)

    def _close(self) -> None:
        for fd in self._pidfds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pidfds.clear()
        if self._source is not None:
            self._source.close()
            self._source = None
            watchers.unregister()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    # ---- scanning ------------------------------------------------------------

    def scan(
        self, trigger: str, *, since_ns: int | None = None, events: list | None = None
    ) -> None:
        """Scan, and emit a record for every new, changed or resolved finding."""
        self.counters.scans[trigger] = self.counters.scans.get(trigger, 0) + 1
        try:
            doc = self._scan_fn(ScanOptions(walk=self.options.walk, audit_history=False))
        except Exception as exc:  # a daemon reports and goes on; the next wake-up retries
            self.counters.errors += 1
            self.emit({"type": "error", "message": f"scan failed: {exc}", "trigger": trigger})
            return
        self._last_scan = {
            "at": doc.get("generated_at"),
            "duration_ms": doc.get("scanner", {}).get("duration_ms"),
            "findings": len(doc.get("findings", [])),
            "trigger": trigger,
        }
        held = self._hold_unconfirmed(doc["findings"])
        now = time.time()
        shown = [f for f in doc["findings"] if f.get("id") not in held]
        for change in self.state.update(shown, now=now):
            body = alerts.change_record(change, trigger=trigger, now=now)
            if since_ns is not None:
                body["latency_ms"] = round((time.monotonic_ns() - since_ns) / 1e6, 1)
            if events:
                body["events"] = events
            self.emit(body)
            if change.kind == "resolved":
                self.counters.resolutions += 1
            else:
                self.counters.alerts += 1
        self._track_owners()
        self._refresh_file_watches(doc)

    def _hold_unconfirmed(self, findings: list[dict]) -> set[str]:
        """Ids of new critical plaintext hooks to hold back (see AUTHORIZATION_GRACE)."""
        candidates = [
            f
            for f in findings
            if f.get("severity") == "critical"
            and f.get("category") == "plaintext-hook"
            and f.get("id") not in self.state.tracked
            and (f.get("owner") or {}).get("pid")
        ]
        if not candidates:
            self._holds.clear()
            return set()
        from ecap.detect.sessions import journal_evidence
        from ecap.journal import Journal

        granted = {pid for _, pid in journal_evidence(Journal()).grants}
        now = time.monotonic()
        holds: dict[str, float] = {}
        for f in candidates:
            if f["owner"]["pid"] in granted:
                since = self._holds.get(f["id"], now)
                if now - since < AUTHORIZATION_GRACE:
                    holds[f["id"]] = since
                    self._schedule("confirm", time.monotonic_ns(), at=since + AUTHORIZATION_GRACE)
        self._holds = holds
        return set(holds)

    def _track_owners(self) -> None:
        wanted = self.state.owner_pids()
        for pid in list(self._pidfds):
            if pid not in wanted:
                os.close(self._pidfds.pop(pid))
        for pid in wanted - set(self._pidfds):
            try:
                self._pidfds[pid] = os.pidfd_open(pid)
            except OSError:
                self._schedule("process-exit", time.monotonic_ns())

    def _schedule(
        self,
        trigger: str,
        since_ns: int,
        events: list[dict] | None = None,
        *,
        at: float | None = None,
    ) -> None:
        now = time.monotonic()
        if self._pending is None:
            if at is None:
                at = max(now + DEBOUNCE, self._last_event_scan + MIN_GAP)
            self._pending = _Pending(at, [trigger], since_ns, [])
        elif trigger not in self._pending.triggers:
            self._pending.triggers.append(trigger)
        pending = self._pending
        pending.since_ns = min(pending.since_ns, since_ns)
        for ev in events or []:
            if len(pending.events) < MAX_EVENTS_IN_RECORD and ev not in pending.events:
                pending.events.append(ev)

    def _run_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        self.scan(pending.triggers[0], since_ns=pending.since_ns, events=pending.events)
        self._last_event_scan = time.monotonic()

    # ---- the loop ------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = signal.Signals(signum).name

    def _reload_options(self) -> None:
        self._reload = False
        try:
            new = load_config(self._config_path, self._overrides)
        except UsageError as exc:
            self.counters.errors += 1
            self.emit({"type": "error", "message": f"reload refused: {exc.one_line()}"})
            return
        self.output.close()
        self.options = new
        self._apply_env()
        self.state.set_threshold(new.min_severity)
        self.output = _Output(new, self._host, self._version)
        self.emit({"type": "reload", "options": asdict(new)})
        self.scan("reload")

    def _read_kernel_events(self) -> None:
        if self._source is None:
            return
        events = self._source.read()
        mine = os.getpid()
        events = [e for e in events if e.pid != mine]
        if not events:
            return
        self.counters.kernel_events += len(events)
        summary = [
            {"pid": e.pid, "comm": e.comm, "syscall": e.command, "ret": e.ret} for e in events
        ]
        self._schedule("bpf-event", min(e.monotonic_ns for e in events), summary)

    def run(self, *, max_scans: int | None = None) -> int:
        """Watch until SIGTERM/SIGINT (or ``max_scans`` scans, for tests); returns 0."""
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        handlers = {
            s: signal.signal(s, self._on_signal)
            for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
        }
        try:
            self._start_sources()
            self.emit(
                {
                    "type": "start",
                    "options": asdict(self.options),
                    "event_source": self._sources(),
                    "programs": self._programs,
                }
            )
            self.scan("startup")
            self._loop(rfd, max_scans)
        except BaseException as exc:
            self._stop = self._stop or f"error: {exc!r}"
            raise
        finally:
            self.emit(
                {
                    "type": "stop",
                    "reason": self._stop or "finished",
                    "uptime_s": round(time.time() - self._started, 3),
                    "counts": self._counts(),
                }
            )
            self._close()
            self.output.close()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in handlers.items():
                signal.signal(s, h)
            os.close(rfd)
            os.close(wfd)
        return 0

    def _loop(self, wake_fd: int, max_scans: int | None) -> None:
        now = time.monotonic()
        next_rescan = now + self.options.rescan
        next_heartbeat = now + self.options.heartbeat
        while self._stop is None:
            if max_scans is not None and sum(self.counters.scans.values()) >= max_scans:
                return
            deadlines = [next_rescan, next_heartbeat]
            if self._pending is not None:
                deadlines.append(self._pending.at)
            timeout = max(0.0, min(deadlines) - time.monotonic())
            fds = [wake_fd, *self._pidfds.values()]
            if self._source is not None:
                fds.append(self._source.fileno())
            if self._inotify is not None:
                fds.append(self._inotify.fd)
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                ready = []
            if wake_fd in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_fd, 512)
            if self._stop is not None:
                return
            if self._reload:
                self._reload_options()
                next_rescan = time.monotonic() + self.options.rescan
                next_heartbeat = min(next_heartbeat, time.monotonic() + self.options.heartbeat)
            if self._source is not None and self._source.fileno() in ready:
                self._read_kernel_events()
            if self._inotify is not None and self._inotify.fd in ready:
                self._inotify.drain()
                self._schedule("file-event", time.monotonic_ns())
            exited = [pid for pid, fd in self._pidfds.items() if fd in ready]
            for pid in exited:
                os.close(self._pidfds.pop(pid))
            if exited:
                self._schedule("process-exit", time.monotonic_ns())
            now = time.monotonic()
            if self._pending is not None and now >= self._pending.at:
                self._run_pending()
            if now >= next_rescan:
                self.scan("rescan")
                next_rescan = time.monotonic() + self.options.rescan
            if now >= next_heartbeat:
                self.emit(
                    {
                        "type": "heartbeat",
                        "uptime_s": round(time.time() - self._started, 3),
                        "counts": self._counts(),
                        "event_source": self._sources(),
                        "last_scan": self._last_scan,
                    }
                )
                next_heartbeat = time.monotonic() + self.options.heartbeat
