"""``capture mysqld``: every statement a MariaDB (or MySQL) server executes.

Hooks (``bpf/mysqld.bpf.c``): ``dispatch_command`` (each client command: its text
for COM_QUERY and COM_STMT_PREPARE, the statement id for COM_STMT_EXECUTE), the
diagnostics area's ``set_ok_status`` / ``set_eof_status`` / ``set_error_status``
(the statement's real outcome — ``dispatch_command``'s return value only says
whether to close the connection), ``Prepared_statement::prepare`` /
``::execute_loop`` / ``::execute``
(which prepared statement an execute ran, so it is shown with its text),
``general_log_print`` (called at every login with "user@host on db", whether or
not the general log is on: the account a connection logs in as) and
``mysql_change_db`` (its database).

These are C++ functions: the server exports them mangled, and the parameter
lists differ between servers and versions (MariaDB's ``dispatch_command`` takes
``(enum_server_command, THD*, char*, uint, bool)``, MySQL 5.7/8.0's
``(THD*, const COM_DATA*, enum_server_command)``). They are found by their
mangled name's prefix; :func:`dispatch_signature` reads which layout the
arguments have from the rest of the name.
"""

from __future__ import annotations

from typing import Any

from ecap.capture.events import STATEMENT
from ecap.capture.modules._statements import Statement, StatementRecords, binary_version
from ecap.capture.modules.interface import CaptureModule, Hook, HookTarget, Probe, RecordContext
from ecap.capture.records import Record

DISPATCH = "_Z16dispatch_command"
SIGNATURES = {"19enum_server_command": 0, "P3THDPK8COM_DATA": 1}
"""Mangled parameter list prefix → the cookie ``my_dispatch`` reads the arguments by."""

# (mangled-name prefix, entry program, return program, required); the Hook names
# are MariaDB 10.11's full names (what the detector sees on Debian).
PROBED = (
    (DISPATCH, "_Z16dispatch_command19enum_server_commandP3THDPcjb", "my_dispatch",
     "my_dispatch_return", True),
    ("_ZN16Diagnostics_area13set_ok_status", "_ZN16Diagnostics_area13set_ok_statusEyyPKc",
     "my_ok", None, True),
    ("_ZN16Diagnostics_area14set_eof_status", "_ZN16Diagnostics_area14set_eof_statusEP3THD",
     "my_eof", None, False),
    ("_ZN16Diagnostics_area16set_error_status", "_ZN16Diagnostics_area16set_error_statusEj",
     "my_error", None, True),
    ("_ZN18Prepared_statement7prepareE", "_ZN18Prepared_statement7prepareEPKcj",
     "my_prepared", None, False),
    ("_ZN18Prepared_statement7executeE", "_ZN18Prepared_statement7executeEP6Stringb",
     "my_prepared", None, False),
    ("_ZN18Prepared_statement12execute_loopE",
     "_ZN18Prepared_statement12execute_loopEP6StringbPhS2_", "my_prepared", None, False),
    ("_Z17general_log_print", "_Z17general_log_printP3THD19enum_server_commandPKcz",
     "my_login", None, False),
    ("_Z15mysql_change_db", "_Z15mysql_change_dbP3THDPK25st_mysql_const_lex_stringb",
     "my_change_db", "my_change_db_return", False),
)  # fmt: skip
ERROR_STATUS_5 = "_ZN16Diagnostics_area16set_error_statusEjPKcS1_RK27Sql_user_condition_identityPK13Sql_condition"
"""The other overload of set_error_status MariaDB 10.11 calls (also hooked)."""
HOOKS = (
    *(Hook(name, entry, ret, plaintext=True, required=required)
      for _prefix, name, entry, ret, required in PROBED),
    Hook(ERROR_STATUS_5, "my_error", plaintext=True),
)  # fmt: skip
COMMANDS = {2: "init_db", 3: "query", 22: "prepare", 23: "execute"}


def dispatch_signature(symbol: str) -> int | None:
    """Which argument layout a mangled ``dispatch_command`` has (None: unknown)."""
    if not symbol.startswith(DISPATCH):
        return None
    rest = symbol[len(DISPATCH) :]
    return next((sig for prefix, sig in SIGNATURES.items() if rest.startswith(prefix)), None)


def find_probes(elf: Any) -> tuple[list[Probe], dict[str, int]]:
    """Every probe this module puts in a server executable, by mangled prefix."""
    names = elf.function_names()
    wanted = {n for n in names for prefix, *_ in PROBED if n.startswith(prefix)}
    symbols = elf.find_functions(wanted)
    probes: list[Probe] = []
    for prefix, _name, entry, ret, _required in PROBED:
        for name, sym in sorted(symbols.items()):
            if not name.startswith(prefix):
                continue
            cookie = 0
            if prefix == DISPATCH:
                sig = dispatch_signature(name)
                if sig is None:
                    continue
                cookie = sig
            probes.append(Probe(name, sym.file_offset, entry, False, cookie))
            if ret:
                probes.append(Probe(name, sym.file_offset, ret, True, cookie))
    return probes, {n: s.file_offset for n, s in symbols.items()}


def resolve(pid: int, options: dict[str, Any]) -> HookTarget:
    from ecap import procfs
    from ecap.capture.modules._libraries import stable_exe_path
    from ecap.elf import NotAnElf, open_elf
    from ecap.errors import UsageError

    exe = procfs.exe(pid)
    host_path = procfs.PROC / str(pid) / "exe"
    try:
        probes, offsets = find_probes(open_elf(host_path))
    except NotAnElf:
        probes, offsets = [], {}
    programs = {p.program for p in probes}
    missing = [name for prefix, name, entry, _r, req in PROBED if req and entry not in programs]
    if missing or exe is None:
        raise UsageError(
            f"process {pid} ({procfs.comm(pid)!r}) is not a MariaDB/MySQL server ecap knows: "
            f"its executable defines no {', '.join(missing) or 'executable'}",
            hint="give the PID of mariadbd / mysqld (the server, not a client)",
        )
    version = binary_version(host_path, rb"(\d+\.\d+\.\d+-MariaDB)") or binary_version(
        host_path, rb"\x00(8\.\d+\.\d+|5\.7\.\d+)\x00"
    )
    return HookTarget(pid, stable_exe_path(pid, exe), exe, "executable", version, tuple(probes),
                      offsets)  # fmt: skip


class MysqldRecords(StatementRecords):
    server = "mysqld"

    def __init__(self, ctx: RecordContext) -> None:
        super().__init__(ctx)
        self.end = ctx.abi.struct("ecap_query_end")
        self.texts: dict[int, Statement] = {}
        """tid → the statement whose text arrived, waiting for its end."""
        self.prepared: dict[tuple[int, int], bytes] = {}
        """(pid, Prepared_statement*) → its text."""
        abi = ctx.abi
        self.handlers = {
            abi.KIND_QUERY: self._on_text,
            abi.KIND_QUERY_END: self._on_end,
            abi.KIND_LOGIN: lambda rec: self.on_login(rec.pid, f"0x{rec.conn:x}", rec.data),
            abi.KIND_DATABASE: self._on_database,
        }

    def _on_text(self, rec: Record) -> None:
        for call in self.reasm.add(rec):
            self.texts[call.tid] = self.statement(
                call, f"0x{call.conn:x}", COMMANDS.get(rec.fd, str(rec.fd))
            )

    def _on_database(self, rec: Record) -> None:
        name = rec.data.decode("utf-8", "backslashreplace")
        self.session(rec.pid, f"0x{rec.conn:x}").database = name or None

    def _on_end(self, rec: Record) -> None:
        duration_ns, affected, stmt_ptr, command, outcome, error, stmt_id = self.end.unpack_from(
            rec.data
        )
        st = self.texts.pop(rec.tid, None)
        name = COMMANDS.get(command, str(command))
        ended = self.ctx.clock.wall(rec.ts_ns)
        if st is None or st.command != name:
            text = self.prepared.get((rec.pid, stmt_ptr), b"") if command == 23 else b""
            st = Statement(ended - duration_ns / 1e9, rec.pid, rec.tid, rec.comm,
                           f"0x{rec.conn:x}", name, text, len(text), 0, 0)  # fmt: skip
        if command == 23:
            st.statement_id = stmt_id
        abi = self.abi
        if outcome == abi.OUTCOME_ERROR:
            st.error, status = str(error), "error"
        elif outcome in (abi.OUTCOME_OK, abi.OUTCOME_ROWS_SENT):
            status = "ok"
            st.rows = affected if outcome == abi.OUTCOME_OK else None
        elif command == 22:
            # A successful COM_STMT_PREPARE answers with the statement's metadata and
            # leaves the diagnostics area unset; a failed one sets the error.
            status = "ok"
        else:
            status = "unknown"
        if command == 22 and status == "ok" and stmt_ptr:
            self.prepared[(rec.pid, stmt_ptr)] = st.text
        self.write(st, status, duration_ns / 1e9)

    def process_left(self, pid: int, how: str, exit_code: int | None) -> None:
        for tid in [t for t, st in self.texts.items() if st.pid == pid]:
            self.write(self.texts.pop(tid), "unknown", None)
        self.forget(pid)
        self.prepared = {k: v for k, v in self.prepared.items() if k[0] != pid}

    def finish(self) -> None:
        for call in self.reasm.flush():
            self.texts[call.tid] = self.statement(call, f"0x{call.conn:x}", "query")
        for tid in list(self.texts):
            self.write(self.texts.pop(tid), "unknown", None)


MODULE = CaptureModule(
    name="mysqld",
    summary="MariaDB/MySQL server: every statement (query, prepare, execute), its outcome",
    classification="database",
    bpf_object="mysqld",
    hooks=HOOKS,
    emits=frozenset({STATEMENT}),
    identity="THD* (server connection)",
    resolve=resolve,
    records=MysqldRecords,
)
