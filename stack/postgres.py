"""A local PostgreSQL server for the batch job, from Debian's `postgresql` package: `ridestream db up`.

    initdb into <state>/postgres (once)  →  pg_ctl start on a free loopback port, TCP only  →  a real query
    (`SELECT 1` on the `ridestream` database) says it is ready  →  <state>/postgres.json records its URL

The data survives `db down`, like a real database (`db down --drop` removes it). PostgreSQL refuses to run
as root; run as root (CI, containers), the server runs as the package's `postgres` user, which then owns
the data directory. `shared/local_cluster.py` reads the state file, so a batch command finds the server
without being told (an explicit `--db` / RIDESTREAM_DB_URL wins).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.errors import DatabaseError
from shared.local_cluster import database_state_path, state_dir
from stack.fleet import free_port

DEBIAN_POSTGRES = Path("/usr/lib/postgresql")
DATABASE = "ridestream"
SUPERUSER = "ridestream"
SERVER_USER = "postgres"  # Debian's package creates it; the server runs as it when we are root
READY_TIMEOUT_S = 60.0

Progress = Callable[[str], None]


def find_postgres_bin() -> Path:
    """The directory of `pg_ctl` and `initdb`: on PATH, else the newest Debian major version."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    versions = sorted(
        (p for p in DEBIAN_POSTGRES.glob("*/bin") if (p / "pg_ctl").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise DatabaseError(
            "PostgreSQL is not installed (no pg_ctl on PATH or in /usr/lib/postgresql/*/bin): install "
            "Debian's `postgresql` package (`make install` does), or pass --db postgresql://... of a server"
        )
    return versions[-1]


def _server_user() -> pwd.struct_passwd | None:
    """Who the server runs as when we are root (PostgreSQL refuses root); None: as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise DatabaseError(
            f"running as root, and there is no `{SERVER_USER}` user to run PostgreSQL as (it refuses "
            "root): install Debian's `postgresql` package, or run as an unprivileged user"
        ) from None


def _as_server(command: Sequence[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *command] if _server_user() is not None else list(command)


def _run(command: Sequence[str], what: str) -> str:
    done = subprocess.run(_as_server(command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DatabaseError(f"{what} failed: {(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout


# Text compared byte by byte (still UTF-8): the rides' and predictions' keys are ASCII ids, in the same
# order as under C.UTF-8, but libc's collation made the index inserts cost ~1/5 more of the server's COPY.
LOCALE = "C"
# A batch window is one big transaction of COPYs: with the defaults (1 GB of WAL, checkpoints every 5 min)
# a million-ride window forced checkpoints mid-write. Room for the WAL of one window instead.
BULK_SETTINGS = "-c max_wal_size=8GB -c checkpoint_timeout=30min -c shared_buffers=256MB -c wal_buffers=32MB"


@dataclass(frozen=True)
class LocalPostgres:
    data_dir: Path
    port: int
    bin_dir: Path

    @property
    def url(self) -> str:
        """libpq's form, which psql, psycopg and (normalised by shared/batch_store.py) SQLAlchemy all take."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    @classmethod
    def start(
        cls, data_dir: Path, port: int | None = None, timeout_s: float = READY_TIMEOUT_S,
        progress: Progress | None = None,
    ) -> LocalPostgres:  # fmt: skip
        """initdb when `data_dir` is new, start the server, create the database, wait for a real query."""
        note = progress or (lambda _line: None)
        bin_dir = find_postgres_bin()
        data_dir = data_dir.resolve()
        _prepare(data_dir)
        if not (data_dir / "PG_VERSION").is_file():
            note(f"initdb {data_dir}")
            _run(
                [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, "--auth=trust",
                 "--encoding=UTF8", f"--locale={LOCALE}", "--no-sync"],
                "initdb",
            )  # fmt: skip
        server = cls(data_dir, port or free_port(), bin_dir)
        options = (
            f"-c listen_addresses=127.0.0.1 -p {server.port} -c unix_socket_directories='' {BULK_SETTINGS}"
        )
        _run(
            [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(data_dir / "server.log"), "-o", options,
             "-w", "-t", str(int(timeout_s)), "start"],
            f"starting PostgreSQL (log: {data_dir / 'server.log'})",
        )  # fmt: skip
        try:
            server.wait_ready(timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def wait_ready(self, timeout_s: float) -> None:
        """Ready means a query answers: create the database if needed, then `SELECT 1` in it."""
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                admin = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
                with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
                    exists = connection.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                    ).fetchone()
                    if exists is None:
                        connection.execute(f'CREATE DATABASE "{DATABASE}"')
                with psycopg.connect(self.url, connect_timeout=5) as connection:
                    connection.execute("SELECT 1").fetchone()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise DatabaseError(f"PostgreSQL on port {self.port} did not answer: {exc}") from None
                time.sleep(0.2)

    def pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        done = subprocess.run(
            _as_server([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"]),
            capture_output=True, check=False,
        )  # fmt: skip
        return done.returncode == 0

    def stop(self) -> None:
        if self.running():
            _run(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
                "pg_ctl stop",
            )


def _prepare(data_dir: Path) -> None:
    """The data directory, owned by whoever runs the server, and reachable by it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    user = _server_user()
    if user is None:
        return
    os.chown(data_dir, user.pw_uid, user.pw_gid)
    for parent in data_dir.parents:
        if not os.stat(parent).st_mode & 0o001:
            raise DatabaseError(
                f"{parent} is not searchable by the `{SERVER_USER}` user PostgreSQL runs as (we are root): "
                "put the state directory elsewhere (RIDESTREAM_STATE_DIR) or chmod o+x it"
            )


def write_state(server: LocalPostgres) -> None:
    path = database_state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"url": server.url, "port": server.port, "data_dir": str(server.data_dir),
             "bin_dir": str(server.bin_dir), "pid": server.pid()}  # fmt: skip
    path.write_text(json.dumps(state, indent=2) + "\n")


def load_state() -> LocalPostgres | None:
    try:
        state = json.loads(database_state_path().read_text())
        return LocalPostgres(Path(state["data_dir"]), int(state["port"]), Path(state["bin_dir"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_state() -> None:
    database_state_path().unlink(missing_ok=True)


def default_data_dir() -> Path:
    return state_dir() / "postgres"
