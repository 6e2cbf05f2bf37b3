"""Units of the shell and database modules, on recorded values (no kernel)."""

from __future__ import annotations

import pytest

from ecap.authz import claims, request, token
from ecap.capture.modules import mysqld, postgres, zsh
from ecap.capture.schema import SchemaError, validate_record
from ecap.errors import UsageError

MARIADB_1011 = "_Z16dispatch_command19enum_server_commandP3THDPcjb"
MARIADB_OLD = "_Z16dispatch_command19enum_server_commandP3THDPcj"
MYSQL_57_80 = "_Z16dispatch_commandP3THDPK8COM_DATA19enum_server_command"


@pytest.mark.parametrize(
    "symbol,signature",
    [(MARIADB_1011, 0), (MARIADB_OLD, 0), (MYSQL_57_80, 1),
     ("_Z16dispatch_commandP3THDPKc", None), ("dispatch_command", None)],
)  # fmt: skip
def test_dispatch_command_signature_from_its_mangled_name(symbol, signature):
    assert mysqld.dispatch_signature(symbol) == signature


class _FakeElf:
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def function_names(self) -> list[str]:
        return self.names

    def find_functions(self, names):
        from ecap.elf import Symbol

        return {n: Symbol(n, 0x1000 + i, 16, 0x1000 + i) for i, n in enumerate(sorted(names))}


def test_a_mysql_server_is_probed_with_its_own_signature():
    probes, _ = mysqld.find_probes(
        _FakeElf([MYSQL_57_80, "_ZN16Diagnostics_area13set_ok_statusEyyPKc", "unrelated"])
    )
    dispatch = [p for p in probes if p.function == MYSQL_57_80]
    assert {(p.program, p.retprobe, p.cookie) for p in dispatch} == {
        ("my_dispatch", False, 1), ("my_dispatch_return", True, 1),
    }  # fmt: skip
    assert "unrelated" not in {p.function for p in probes}


def test_zsh_text_is_unmetafied_and_an_aborted_line_is_not_a_command():
    # zsh metafies 0x83..0x9f and NUL: Meta then the byte XOR 32.
    assert zsh.unmetafy(b"echo \x83\xa3\x83\xbf") == b"echo \x83\x9f"
    assert zsh.line_text(b"ls -l\n", 0) == b"ls -l"
    assert zsh.line_text(b"half typed", 0) is None
    assert zsh.line_text(b"cut short", 100) == b"cut short"


def test_zsh_getline_cookie_fields():
    cookie = zsh.getline_cookie(0x39DB0, 0x228A0, 0x8DD, 0x5289C)
    assert cookie & 0xFFFFFFFF == (0x5289C - 0x39DB0) & 0xFFFFFFFF
    assert ((cookie >> 32) & 0xFFFFFF) == (0x228A0 - 0x39DB0) & 0xFFFFFF
    assert (cookie >> 56) * 16 >= 0x8DD
    with pytest.raises(ValueError):
        zsh.getline_cookie(0, 1 << 24, 16, 0)


def test_postgres_sqlstate_and_error_level():
    code = sum(((ord(c) - ord("0")) & 0x3F) << (6 * i) for i, c in enumerate("42P01"))
    assert postgres.sqlstate(code) == "42P01"
    assert (postgres.error_level(15), postgres.error_level(13)) == (21, 20)


def _statement(**changes):
    rec = {
        "type": "statement", "server": "postgres", "ts": "2026-01-01T00:00:00+00:00",
        "duration": 0.1, "pid": 1, "tid": 1, "comm": "postgres", "session": "1", "user": None,
        "database": None, "command": "simple", "statement_id": None, "status": "ok",
        "error": None, "rows": 1, "tags": ["SELECT"], "length": 8, "truncated": 0, "lost": 0,
        "text": "select 1",
    }  # fmt: skip
    return {**rec, **changes}


def test_schema_checks_statement_and_command_records():
    assert validate_record(_statement()) == "statement"
    for bad in ({"status": "fine"}, {"tags": [1]}, {"rows": "1"}, {"text_b64": 5}):
        with pytest.raises(SchemaError):
            validate_record(_statement(**bad))
    cmd = {
        "type": "command", "shell": "bash", "ts": "2026-01-01T00:00:00+00:00", "ended_at": None,
        "pid": 1, "uid": 0, "comm": "bash", "tty": None, "status": None, "ending": "running",
        "lines": 1, "length": 2, "truncated": 0, "lost": 0, "text": "ls",
    }  # fmt: skip
    assert validate_record(cmd) == "command"
    with pytest.raises(SchemaError):
        validate_record({**cmd, "ending": "vanished"})


def test_descendants_claim_is_checked_where_parsed(sleeper):
    doc = request.build([sleeper.pid], modules=["bash"], modes=None, reason="r",
                        descendants=True)  # fmt: skip
    assert doc["descendants"] is True
    with pytest.raises(UsageError, match="descendants"):
        request.validate({**doc, "descendants": "yes"}, "test")
    with pytest.raises(claims.ClaimError):
        claims.flag(1, "scope.descendants")


def test_a_token_grants_descendants_only_when_requested(ecap_env, sleeper):
    from ecap.authz import keys
    from ecap.authz.verify import verify_token

    key = keys.load_private(ecap_env.key_path)
    plain = request.build([sleeper.pid], modules=["bash"], modes=None, reason="r")
    with pytest.raises(UsageError, match="not requested"):
        token.issue(plain, key, operator="o", reason="r", ttl_seconds=60, issuer="i",
                    descendants=True)  # fmt: skip
    assert verify_token(token.issue(plain, key, operator="o", reason="r", ttl_seconds=60,
                                    issuer="i")).descendants is False  # fmt: skip
    asked = request.build([sleeper.pid], modules=["bash"], modes=None, reason="r",
                          descendants=True)  # fmt: skip
    granted = token.issue(asked, key, operator="o", reason="r", ttl_seconds=60, issuer="i",
                          descendants=True)  # fmt: skip
    assert verify_token(granted).descendants is True
    narrowed = token.issue(asked, key, operator="o", reason="r", ttl_seconds=60, issuer="i")
    assert verify_token(narrowed).descendants is False
    path = ecap_env.write_token(granted)
    shown = ecap_env.run("ecap-audit", "verify", "--token", str(path))
    assert shown.returncode == 0 and "descendants   covered" in shown.stdout
