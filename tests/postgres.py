"""A private, throw-away PostgreSQL cluster for tests and benchmarks (as tests/slapd.py).

    with Postgres(tmp_path) as pg:
        pg.url("mfa")          # postgresql://bridge@127.0.0.1:PORT/mfa, created on demand

Debian keeps the server programs in /usr/lib/postgresql/<version>/bin. initdb refuses to
run as root, so when the tests run as root (CI) the cluster belongs to the `postgres`
user, lives in a directory of its own under /tmp, and its programs run through
`runuser`. Trust authentication on loopback only.
`stop` and `start` again keep the data: the tests take the database away under load.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg

from tests.harness import free_tcp_port

USER = "bridge"


def server_bin() -> Path:
    """The directory of Debian's PostgreSQL server programs (the newest installed)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise FileNotFoundError("PostgreSQL server programs not found: apt install postgresql")
    return found[-1].parent


class Postgres:
    """One cluster on 127.0.0.1 at a free port, data under `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self._as_root = os.geteuid() == 0
        if self._as_root:  # pytest's directories are root's alone: postgres could not enter
            workdir = Path(tempfile.mkdtemp(prefix="mfa-pg-"))
            shutil.chown(workdir, "postgres", "postgres")
            weakref.finalize(self, shutil.rmtree, workdir, True)
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_tcp_port()
        self.bin = server_bin()
        self.data = workdir / "data"
        self.running = False
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync")
        weakref.finalize(self, Postgres._stop_quietly, self._command("pg_ctl"), str(self.data))

    def _command(self, program: str) -> list[str]:
        command = [str(self.bin / program)]
        return ["runuser", "-u", "postgres", "--", *command] if self._as_root else command

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self._command(program), *args],
            check=True,
            capture_output=True,
            cwd=self.workdir,
            timeout=60,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.workdir / "log"),
            "-w",
            "start",
        )
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            self.running = False

    @staticmethod
    def _stop_quietly(pg_ctl: list[str], data: str) -> None:
        subprocess.run(
            [*pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True, check=False
        )

    def url(self, dbname: str = "mfa") -> str:
        """The URL of database `dbname`, created if it does not exist yet."""
        with psycopg.connect(self._url("postgres"), autocommit=True) as db:
            found = db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if found.fetchone() is None:
                db.execute(f'CREATE DATABASE "{dbname}"')
        return self._url(dbname)

    def _url(self, dbname: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
