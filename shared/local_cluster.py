"""Where the local broker of `ridestream broker up` (and the PostgreSQL server of `ridestream db up`) say
they listen: the one piece of the operator's stack (stack/broker.py, stack/postgres.py) that the runtime
reads, so that a service started without bootstrap servers (a batch job without --db) finds them.

The state file is written by the stack and only read here; this module needs nothing beyond the standard
library, so a scoring process never imports the broker manager (or psutil) to resolve its address.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STATE_DIR_ENV = "RIDESTREAM_STATE_DIR"


def state_dir() -> Path:
    """Where the local servers record themselves: $RIDESTREAM_STATE_DIR or ./.ridestream."""
    return Path(os.environ.get(STATE_DIR_ENV) or Path.cwd() / ".ridestream")


def state_path() -> Path:
    """Where `broker up` records its cluster: broker.json in the state directory."""
    return state_dir() / "broker.json"


def database_state_path() -> Path:
    """Where `db up` records its PostgreSQL server: postgres.json in the state directory."""
    return state_dir() / "postgres.json"


def recorded_database_url(path: Path | None = None) -> str | None:
    """The URL of the PostgreSQL server `db up` started, while its postmaster is alive; None otherwise."""
    try:
        state = json.loads((path or database_state_path()).read_text())
        url, pid = state["url"], state.get("pid")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(url) if url and _pid_alive(pid) else None


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def recorded_bootstrap_servers(path: Path | None = None) -> str | None:
    """Bootstrap servers of the recorded local cluster while one of its JVMs is alive; None otherwise.

    A reused pid can make a dead cluster look alive; the connection then fails with KafkaUnavailableError,
    which names the address, so the mistake is visible rather than silent.
    """
    try:
        state = json.loads((path or state_path()).read_text())
        nodes = state["nodes"]
        servers = state["bootstrap_servers"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    alive = any(_pid_alive(node.get("pid")) for node in nodes if isinstance(node, dict))
    return str(servers) if alive and servers else None
