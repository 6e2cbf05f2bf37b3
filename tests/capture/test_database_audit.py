"""``capture mysqld`` / ``capture postgres`` on real servers in temporary directories.

One MariaDB (``mariadb-install-db`` + ``mariadbd``) and one PostgreSQL cluster
(``initdb`` + ``postgres``) per module, started here and stopped after; clients
are the real ones (``mariadb``, ``psql``, ``pgbench -M extended``, and a small C
client for MariaDB's binary prepared statements).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.capture.audit_helpers import authorized_finding, records_of, stop_capture
from tests.db_servers import MariaDB, Postgres

pytestmark = [pytest.mark.bpf]
HERE = Path(__file__).parent
BIG = "select '" + "q" * 100 * 1024 + "' as big"  # a 100 KiB query


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    db = MariaDB(tmp_path_factory.mktemp("mariadb")).start()
    try:
        setup = db.sql("create database audit; create table audit.t (who char(1), n int)")
        assert setup.returncode == 0, setup.stderr
        yield db
    finally:
        db.stop()


@pytest.fixture(scope="module")
def stmt_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stmt") / "stmt_client"
    flags = subprocess.run(["mariadb_config", "--cflags", "--libs"], capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    subprocess.run(["gcc", "-O1", "-o", str(out), str(HERE / "programs" / "stmt_client.c"),
                    *flags], check=True)  # fmt: skip
    return out


def test_mariadb_statements_with_their_outcome(mariadb, stmt_client, start_capture):
    run = start_capture([mariadb.proc.pid], module="mysqld")
    finding = authorized_finding(run.proc.pid)
    assert {h["class"] for h in finding["hooked"]} == {"database"}

    def connection(who: str) -> None:
        sql = "".join(f"insert into t values ('{who}', {i});" for i in range(40))
        done = mariadb.sql(sql, "audit")
        assert done.returncode == 0, done.stderr

    both = [threading.Thread(target=connection, args=(w,)) for w in "AB"]
    for t in both:
        t.start()
    for t in both:
        t.join(60)
    failed = mariadb.sql("select * from missing_table", "audit")
    assert "1146" in failed.stderr
    prepared = subprocess.run(
        [str(stmt_client), str(mariadb.socket), "audit", "insert into t values ('P', ?)", "7",
         "3"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert prepared.stdout.strip() == "ok 1", prepared.stderr
    assert mariadb.sql(BIG).returncode == 0
    stop_capture(run)

    stmts = records_of(run.output, "statement")
    for who in "AB":
        mine = [s for s in stmts if s["text"].startswith(f"insert into t values ('{who}'")]
        assert [s["text"] for s in mine] == [
            f"insert into t values ('{who}', {i})" for i in range(40)
        ]
        assert len({s["session"] for s in mine}) == 1, "one connection, one session"
        assert all((s["status"], s["rows"]) == ("ok", 1) for s in mine)
        assert all((s["user"], s["database"]) == ("root@localhost", "audit") for s in mine)
    sessions = {w: {s["session"] for s in stmts if f"('{w}'," in s["text"]} for w in "AB"}
    assert sessions["A"].isdisjoint(sessions["B"]) or len(stmts) == 0

    (error,) = [s for s in stmts if "missing_table" in s["text"]]
    assert (error["status"], error["error"], error["rows"]) == ("error", "1146", None)

    prepare = [s for s in stmts if s["command"] == "prepare"]
    executes = [s for s in stmts if s["command"] == "execute"]
    assert [p["text"] for p in prepare] == ["insert into t values ('P', ?)"]
    assert [(e["text"], e["status"], e["rows"]) for e in executes] == [
        ("insert into t values ('P', ?)", "ok", 1)
    ] * 3
    assert len({e["statement_id"] for e in executes}) == 1

    (big,) = [s for s in stmts if s["text"].startswith("select 'qqq")]
    assert (big["text"], big["length"], big["truncated"], big["lost"]) == (BIG, len(BIG), 0, 0)
    assert big["status"] == "ok" and big["duration"] > 0
    assert records_of(run.output, "summary")[0]["events"]["statement"] == len(stmts)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    pg = Postgres(tmp_path_factory.mktemp("pg") / "cluster").start()
    try:
        assert pg.psql("create table t (x int)").returncode == 0
        yield pg
    finally:
        pg.stop()


def _pgbench_extended(pg: Postgres, sql: str) -> None:
    done = subprocess.run(
        ["pgbench", "-n", "-M", "extended", "-t", "2", "-f", "/dev/stdin"], input=sql,
        capture_output=True, text=True, env=pg.env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_postgres_simple_and_extended_protocol(postgres, start_capture):
    run = start_capture([postgres.proc.pid], module="postgres", descendants=True)
    authorized_finding(run.proc.pid)
    assert postgres.psql("insert into t values (1), (2), (3)").returncode == 0
    assert postgres.psql("select x from t order by x").stdout.split() == ["1", "2", "3"]
    assert "42P01" in postgres.psql("select * from nope", "-v", "VERBOSITY=verbose").stderr
    _pgbench_extended(postgres, "select x from t where x >= 2;\n")
    stop_capture(run)

    stmts = records_of(run.output, "statement")
    by_text = {}
    for s in stmts:
        by_text.setdefault(s["text"], []).append(s)
    (insert,) = by_text["insert into t values (1), (2), (3)"]
    assert (insert["command"], insert["status"], insert["tags"], insert["rows"]) == (
        "simple", "ok", ["INSERT"], 3,
    )  # fmt: skip
    (select,) = by_text["select x from t order by x"]
    assert (select["tags"], select["rows"]) == (["SELECT"], 3)
    (error,) = by_text["select * from nope"]
    assert (error["status"], error["error"], error["tags"]) == ("error", "42P01", [])
    extended = by_text["select x from t where x >= 2;"]
    assert [(s["command"], s["status"], s["rows"]) for s in extended] == [("extended", "ok", 2)] * 2
    assert all((s["user"], s["database"]) == ("postgres", "postgres") for s in stmts)
    assert all(s["duration"] is not None and s["duration"] >= 0 for s in stmts)
    assert len({s["pid"] for s in stmts}) >= 4  # one backend per client, none the postmaster
    assert postgres.proc.pid not in {s["pid"] for s in stmts}


def test_postgres_new_backends_need_descendants(postgres, start_capture):
    """A backend named in the token is captured; backends the postmaster forks after
    the start are not, unless the token grants descendants (the test above)."""
    client = subprocess.Popen(["psql", "-X", "-At"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=postgres.env())  # fmt: skip
    try:
        assert client.stdin and client.stdout
        client.stdin.write("select pg_backend_pid();\n")
        client.stdin.flush()
        backend = int(client.stdout.readline())
        run = start_capture([postgres.proc.pid, backend], module="postgres")
        assert postgres.psql("select 'forked after the start'").returncode == 0
        client.stdin.write("select 'from the named backend';\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "from the named backend"
        stop_capture(run)
    finally:
        client.kill()
        client.wait()
    stmts = records_of(run.output, "statement")
    assert [(s["text"], s["pid"]) for s in stmts] == [("select 'from the named backend';", backend)]
    assert records_of(run.output, "header")[0]["descendants"] is False
