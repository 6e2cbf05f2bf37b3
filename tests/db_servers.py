"""Database servers for capture tests, each in a temporary directory.

Started by the tests (module-scoped fixtures share one per test module) and
stopped after them: nothing depends on a server left by an earlier run, and
nothing listens on TCP (Unix sockets in the temporary directory only).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not come up in {timeout}s")


@dataclass
class MariaDB:
    """A mariadbd on a private data directory and socket."""

    base: Path
    proc: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.base / "mysqld.sock"

    def start(self) -> MariaDB:
        data = self.base / "data"
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={self.socket}",
             "--skip-networking", "--user=root", f"--pid-file={self.base / 'mysqld.pid'}",
             "--innodb-buffer-pool-size=16M", "--max-allowed-packet=64M",
             f"--log-error={self.base / 'error.log'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(lambda: self.socket.exists() and self._ping(), 60, "mariadbd")
        return self

    def _ping(self) -> bool:
        return (
            subprocess.run([*self.client_argv(), "-e", "select 1"], capture_output=True).returncode
            == 0
        )

    def client_argv(self, database: str | None = None) -> list[str]:
        argv = ["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot", "--batch"]
        return argv + ([database] if database else [])

    def sql(self, text: str, database: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.client_argv(database), "-e", text], capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def postgres_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    assert found, "PostgreSQL is not installed (make setup installs it)"
    return Path(found[-1]).parent


@dataclass
class Postgres:
    """A cluster made with initdb in a temporary directory, owned by ``postgres``."""

    base: Path
    proc: subprocess.Popen | None = None
    bindir: Path = field(default_factory=postgres_bindir)

    def _as_postgres(self) -> dict:
        return {"user": "postgres", "group": "postgres"}

    def start(self) -> Postgres:
        data = self.base / "data"
        self.base.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.base, "postgres", "postgres")
        os.chmod(self.base, 0o755)
        for parent in self.base.parents:  # postgres must reach its directory
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
        subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=120, **self._as_postgres(),
        )  # fmt: skip
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(data), "-k", str(self.base),
             "-c", "listen_addresses=", "-c", "fsync=off", "-c", "shared_buffers=16MB"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **self._as_postgres(),
        )  # fmt: skip
        _wait(lambda: self.psql("select 1").returncode == 0, 60, "postgres")
        return self

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGHOST": str(self.base), "PGUSER": "postgres",
                "PGDATABASE": "postgres"}  # fmt: skip

    def psql(self, text: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=0", *extra, "-c", text],
            capture_output=True, text=True, env=self.env(), timeout=60,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # smart shutdown waits for clients: fast is SIGINT
            self.proc.send_signal(2)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
