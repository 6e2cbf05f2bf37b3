"""``capture postgres``: every statement a PostgreSQL server executes.

Debian's postgres 15 is a PIE without ``.symtab`` and exports neither
``exec_simple_query`` nor the extended protocol's ``exec_parse_message`` /
``exec_bind_message`` / ``exec_execute_message`` (they are static). What it does
export, and what each gives (``bpf/postgres.bpf.c``):

- ``pgstat_report_activity(STATE_RUNNING, text)`` — every path that runs SQL
  reports the statement text here: a simple Query, and each of Parse, Bind and
  Execute of the extended protocol (``pg_parse_query`` would miss the Bind and
  Execute of an already prepared statement);
- ``pq_getbyte`` (return) — the type of the protocol message being handled, which
  tells the simple protocol (``Q``) from the extended one (``P``/``B``/``E``);
- ``EndCommand`` + ``GetCommandTagName`` — each command's completion: tag and rows;
- ``errstart`` / ``errcode`` / ``EmitErrorReport`` — an ERROR sent to the client,
  with its SQLSTATE;
- ``ReadyForQuery`` — the end of the message cycle (a simple query, or Sync);
- ``InitPostgres`` — a new backend's user and database.

A backend is a process forked by the postmaster for each connection: capture a
backend's PID, or the postmaster's with ``--with-descendants`` to cover the
backends it forks while the capture runs.
"""

from __future__ import annotations

import re
from typing import Any

from ecap.capture.events import STATEMENT
from ecap.capture.modules._statements import Statement, StatementRecords, binary_version, cstr
from ecap.capture.modules.interface import CaptureModule, Hook, HookTarget, Probe, RecordContext
from ecap.capture.records import Record

HOOKS = (
    Hook("pgstat_report_activity", "pg_activity", plaintext=True, required=True),
    Hook("pq_getbyte", "", "pg_message", plaintext=True),
    Hook("EndCommand", "pg_end_command", plaintext=True, required=True),
    Hook("GetCommandTagName", "", "pg_tag_name", plaintext=True),
    Hook("errstart", "pg_errstart", plaintext=True),
    Hook("errcode", "pg_errcode", plaintext=True),
    Hook("EmitErrorReport", "pg_error_report", plaintext=True),
    Hook("ReadyForQuery", "pg_ready", plaintext=True, required=True),
    Hook("InitPostgres", "pg_login", plaintext=True),
)
EXTENDED = {"P", "B", "E"}


def error_level(major: int | None) -> int:
    """elog.h's ERROR: 21 since PostgreSQL 14 (WARNING_CLIENT_ONLY came before it), 20 before."""
    return 21 if major is None or major >= 14 else 20


def sqlstate(code: int) -> str:
    """An errcode() value (MAKE_SQLSTATE: five 6-bit characters) → ``42P01``."""
    return "".join(chr(((code >> (6 * i)) & 0x3F) + ord("0")) for i in range(5))


def resolve(pid: int, options: dict[str, Any]) -> HookTarget:
    from ecap import procfs
    from ecap.capture.modules._libraries import stable_exe_path
    from ecap.elf import NotAnElf, open_elf
    from ecap.errors import UsageError

    exe = procfs.exe(pid)
    host_path = procfs.PROC / str(pid) / "exe"
    try:
        funcs = open_elf(host_path).find_functions(h.function for h in HOOKS)
    except NotAnElf:
        funcs = {}
    missing = [h.function for h in HOOKS if h.required and h.function not in funcs]
    if missing or exe is None:
        raise UsageError(
            f"process {pid} ({procfs.comm(pid)!r}) is not a PostgreSQL server ecap knows: its "
            f"executable defines no {', '.join(missing) or 'executable'}",
            hint="give the PID of a postgres backend, or of the postmaster with --with-descendants",
        )
    version = binary_version(host_path, rb"(PostgreSQL \d+\.\d+) \(")
    major = int(m.group(1)) if version and (m := re.search(r"(\d+)\.", version)) else None
    probes = []
    for hook in HOOKS:
        sym = funcs.get(hook.function)
        if sym is None:
            continue
        cookie = error_level(major) if hook.function == "errstart" else 0
        if hook.program:
            probes.append(Probe(hook.function, sym.file_offset, hook.program, False, cookie))
        if hook.return_program:
            probes.append(Probe(hook.function, sym.file_offset, hook.return_program, True, 0))
    offsets = {name: sym.file_offset for name, sym in funcs.items()}
    return HookTarget(pid, stable_exe_path(pid, exe), exe, "executable", version, tuple(probes),
                      offsets)  # fmt: skip


def title_session(pid: int) -> tuple[str | None, str | None]:
    """User and database from a backend's process title (``postgres: [cluster: ]user
    db host state``), for backends that logged in before the capture started."""
    from ecap import procfs

    try:
        argv = procfs.cmdline(pid)
    except procfs.ProcessGone:
        return None, None
    title = " ".join(argv)
    if not title.startswith("postgres: "):
        return None, None
    words = title[len("postgres: ") :].split()
    if words and words[0].endswith(":"):
        words = words[1:]
    return (words[0], words[1]) if len(words) >= 3 else (None, None)


class PostgresRecords(StatementRecords):
    server = "postgres"

    def __init__(self, ctx: RecordContext) -> None:
        super().__init__(ctx)
        self.completion = ctx.abi.struct("ecap_completion")
        self.current: dict[int, Statement] = {}
        self.finished_step: dict[int, bool] = {}
        abi = ctx.abi
        self.handlers = {
            abi.KIND_QUERY: self._on_text,
            abi.KIND_COMPLETION: self._on_completion,
            abi.KIND_SQL_ERROR: self._on_error,
            abi.KIND_READY: self._on_ready,
            abi.KIND_LOGIN: lambda rec: self.on_login(rec.pid, str(rec.pid), rec.data),
        }

    def _session_of(self, pid: int) -> None:
        if (pid, str(pid)) not in self.sessions:
            user, database = title_session(pid)
            self.sessions[(pid, str(pid))] = self.session(pid, str(pid))
            self.sessions[(pid, str(pid))].user = user
            self.sessions[(pid, str(pid))].database = database

    def _on_text(self, rec: Record) -> None:
        for call in self.reasm.add(rec):
            message = chr(rec.fd) if 0 < rec.fd < 128 else "?"
            cur = self.current.get(call.pid)
            same = cur is not None and cur.text == call.data and not cur.tags and not cur.error
            if message in ("B", "E") and same and cur.command == "extended":
                continue  # the bind / execute of the statement parsed just before
            if cur is not None:
                self._close(call.pid, call.ts)
            self._session_of(call.pid)
            self.current[call.pid] = self.statement(
                call, str(call.pid), "extended" if message in EXTENDED else "simple"
            )

    def _on_completion(self, rec: Record) -> None:
        cur = self.current.get(rec.pid)
        if cur is None:
            return
        rows, tag = self.completion.unpack_from(rec.data)
        cur.tags.append(cstr(tag) or "?")
        cur.rows = rows

    def _on_error(self, rec: Record) -> None:
        cur = self.current.get(rec.pid)
        if cur is not None:
            cur.error = sqlstate(rec.fd & 0xFFFFFFFF)

    def _on_ready(self, rec: Record) -> None:
        self._close(rec.pid, self.ctx.clock.wall(rec.ts_ns))

    def _close(self, pid: int, ended: float | None) -> None:
        st = self.current.pop(pid, None)
        if st is None:
            return
        status = "error" if st.error else ("ok" if ended is not None else "unknown")
        self.write(st, status, None if ended is None else max(0.0, ended - st.ts))

    def process_left(self, pid: int, how: str, exit_code: int | None) -> None:
        self._close(pid, None)
        self.forget(pid)

    def finish(self) -> None:
        for pid in list(self.current):
            self._close(pid, None)


MODULE = CaptureModule(
    name="postgres",
    summary="PostgreSQL server: every statement (simple and extended protocol), its outcome",
    classification="database",
    bpf_object="postgres",
    hooks=HOOKS,
    emits=frozenset({STATEMENT}),
    identity="backend process",
    resolve=resolve,
    records=PostgresRecords,
)
