"""Helpers of the rollout tests: the `ridestream deploy` options of a test's topics, and waiting for the
controller's decisions."""

from __future__ import annotations

import time
from pathlib import Path

from schemas.control import RolloutState
from stack.deploy import read_fleet_state
from stack.fleet import ServiceProcess

DECIDE_S = 150.0


def deploy_options(models: Path, bootstrap: str, names: dict[str, str]) -> tuple[str, ...]:
    """The `ridestream deploy` options that point it at this test's registry, broker and topics."""
    return (
        "--models", str(models), "-b", bootstrap,
        "--control-topic", names["control"], "--evaluations-topic", names["evaluations"],
        "--evaluator-group", names["evaluator_group"],
    )  # fmt: skip


def rollout(bootstrap: str, names: dict[str, str]) -> RolloutState | None:
    fleet = read_fleet_state(
        {"bootstrap.servers": bootstrap}, names["control"], names["evaluations"], names["evaluator_group"]
    )
    return fleet.rollouts.get("cost")


def wait_until_over(bootstrap: str, names: dict[str, str], instances: list[ServiceProcess]) -> RolloutState:
    deadline = time.monotonic() + DECIDE_S
    while True:
        state = rollout(bootstrap, names)
        if state is not None and not state.running:
            return state
        for instance in instances:
            assert instance.process.poll() is None, instance.log_tail(30)
        assert time.monotonic() < deadline, (
            f"no decision in {DECIDE_S:.0f}s: {state.decisions[-1] if state else None}\n"
            + Path(names["log"]).read_text()[-2000:]
        )
        time.sleep(1.0)  # the controller decides every second; this polls its outcome
