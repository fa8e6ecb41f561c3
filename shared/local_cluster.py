"""Where the local broker of `ridestream broker up` says it listens: the one piece of the operator's stack
(stack/broker.py) that the runtime reads, so that a service started without bootstrap servers finds it.

The state file is written by the stack and only read here; this module needs nothing beyond the standard
library, so a scoring process never imports the broker manager (or psutil) to resolve its address.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STATE_DIR_ENV = "RIDESTREAM_STATE_DIR"


def state_path() -> Path:
    """Where `broker up` records its cluster: $RIDESTREAM_STATE_DIR or ./.ridestream, file broker.json."""
    return Path(os.environ.get(STATE_DIR_ENV) or Path.cwd() / ".ridestream") / "broker.json"


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
