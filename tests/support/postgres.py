"""A throwaway PostgreSQL server for the tests, on 127.0.0.1 and a free port.

Started from the Debian ``postgresql`` package's ``initdb``/``pg_ctl`` (found on PATH or
under ``/usr/lib/postgresql/<major>/bin``) in a temporary folder, with trust authentication
and fsync off, and stopped (``pg_ctl stop -m fast``) when the context ends. PostgreSQL
refuses to run as root, so as root it runs as the ``postgres`` OS user (``runuser``). Without
the tools or psycopg the tests are skipped locally and fail in CI (``CI`` set), where
``scripts/system-packages.sh`` installs them.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

#: Bound on every initdb/pg_ctl call (seconds).
COMMAND_TIMEOUT = 60


def require(condition: bool, message: str) -> None:
    """Skip unless ``condition``; in CI (``CI`` set) a missing requirement is a failure."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require(False, "psycopg not installed: pip install 'psycopg[binary]'")


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl (PATH first, then the newest Debian major)."""
    candidates: list[Path] = []
    if found := shutil.which("pg_ctl"):
        candidates.append(Path(found).parent)

    def major(path: Path) -> int:
        name = path.parent.name
        return int(name) if name.isdigit() else -1

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A running server; :meth:`new_database` gives each test its own empty database."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._names = itertools.count()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = f"test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a private PostgreSQL server; stop it and delete its files afterwards."""
    folder = postgres_bin()
    require(folder is not None, "initdb/pg_ctl not found: apt-get install postgresql")
    assert folder is not None
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL will not run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            require(False, "running as root and there is no 'postgres' user to run PostgreSQL")
            raise
        require(shutil.which("runuser") is not None, "running as root and runuser is missing")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    # Under /tmp, not pytest's tmp_path: its parent folders are private to root.
    root = Path(tempfile.mkdtemp(prefix="nnserve-pg-"))
    data, log = root / "data", root / "server.log"
    if as_postgres:
        os.chown(root, user.pw_uid, user.pw_gid)

    def run(*args: str) -> None:
        subprocess.run(
            [*as_postgres, *args],
            cwd=root,
            check=True,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
        )

    started = False
    try:
        run(
            str(folder / "initdb"),
            *("-D", str(data), "--auth=trust", "--username=postgres"),
            *("--encoding=UTF8", "--locale=C", "--no-sync"),
        )
        for _attempt in range(3):  # another process may take the free port first
            port = free_port()
            try:
                run(
                    str(folder / "pg_ctl"),
                    *("-D", str(data), "-l", str(log), "-w", "-t", str(COMMAND_TIMEOUT)),
                    *("-o", f"-k {root} -h 127.0.0.1 -p {port} -F"),
                    "start",
                )
            except subprocess.CalledProcessError:
                text = log.read_text(errors="replace") if log.exists() else ""
                if re.search(r"could not bind|address already in use", text, re.IGNORECASE):
                    continue
                raise RuntimeError(f"PostgreSQL did not start:\n{text}") from None
            started = True
            break
        else:
            raise RuntimeError("PostgreSQL found no free port in 3 attempts")
        yield PostgresServer(port)
    finally:
        if started:
            run(str(folder / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
