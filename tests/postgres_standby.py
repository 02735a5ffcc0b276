"""A private Postgres primary and a streaming hot standby of it, on free loopback ports, for
tests of DATABASE_READ_URL. Postgres refuses to run as root, so the servers run as the
``postgres`` user when the tests are root."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.services import free_port, unavailable

BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
_WAIT = 60.0


def require_postgres_binaries() -> None:
    """Skip when initdb / pg_ctl / pg_basebackup are missing locally; fail in CI."""
    missing = [b for b in ("initdb", "pg_ctl", "pg_basebackup") if not (BIN / b).exists()]
    if missing:
        unavailable(f"{', '.join(missing)} not found in {BIN}")


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _WAIT
    while True:
        with contextlib.suppress(psycopg.OperationalError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Standby:
    """``start()`` makes a primary (initdb), a base backup of it (``pg_basebackup -R``) and
    starts that as a hot standby streaming from the primary."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="llm-proxy-pg-"))
        self.primary_port = free_port()
        self.standby_port = free_port()
        self._user: list[str] = []
        if os.geteuid() == 0:
            self._user = ["runuser", "-u", "postgres", "--"]
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self.started: list[Path] = []

    def url(self, port: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    @property
    def primary_url(self) -> str:
        return self.url(self.primary_port)

    @property
    def standby_url(self) -> str:
        return self.url(self.standby_port)

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._user, *args], check=True, capture_output=True, timeout=_WAIT, cwd=self.dir
        )

    def _start(self, data: Path, port: int) -> None:
        options = (
            f"-p {port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c wal_level=replica -c max_wal_senders=4 -c hot_standby=on"
        )
        self._run(
            str(BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", f"{data}.log", "-w", "start"
        )
        self.started.append(data)

    def start(self) -> Standby:
        primary, standby = self.dir / "primary", self.dir / "standby"
        self._run(str(BIN / "initdb"), "-D", str(primary), "-A", "trust", "-U", "postgres")
        self._start(primary, self.primary_port)
        self._run(
            str(BIN / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary_port),
            "-U",
            "postgres",
            "-D",
            str(standby),
            "-R",
            "-X",
            "stream",
        )
        self._start(standby, self.standby_port)
        self.wait_streaming()
        return self

    def wait_streaming(self) -> None:
        def streaming() -> bool:
            with psycopg.connect(self.primary_url, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()
            return bool(row and row[0] >= 1)

        _until(streaming, "the standby to stream")

    def pause_replay(self) -> None:
        """The standby stops applying WAL (it keeps receiving it): it now lags for sure."""
        with psycopg.connect(self.standby_url, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")

            def paused() -> bool:
                row = conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()
                return bool(row and row[0] == "paused")

            _until(paused, "the standby's replay to pause")

    def resume_replay(self) -> None:
        with psycopg.connect(self.standby_url, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")

    def caught_up(self) -> bool:
        """Whether the standby has applied everything the primary has written so far."""
        with psycopg.connect(self.primary_url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        with psycopg.connect(self.standby_url, autocommit=True) as conn:
            done = conn.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)
            ).fetchone()
        return bool(done and done[0])

    def stop(self) -> None:
        for data in reversed(self.started):
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
