"""Helpers of the rollout tests: the `ridestream deploy` options of a test's topics, and waiting for the
controller's decisions."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from bench.faults import publish_at_rate
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


def split_load(
    events: list[tuple[bytes, bytes]], shares: tuple[float, ...]
) -> list[list[tuple[bytes, bytes]]]:
    """Consecutive parts of the load in these shares (order kept: part i+1 follows part i on the topic).
    A rollout test publishes each part before the phase that judges it: published all at once, a slow
    machine's first phases could consume the rides the last one needed."""
    bounds = [0, *(round(len(events) * sum(shares[: i + 1])) for i in range(len(shares) - 1)), len(events)]
    return [events[a:b] for a, b in zip(bounds, bounds[1:])]


def publish_next(
    bootstrap: str, topic: str, events: list[tuple[bytes, bytes]], rate: float, previous: threading.Event
) -> threading.Event:
    """Publish `events` once the previous part is all delivered; returns the event set when they are."""
    assert previous.wait(120), "the previous part of the load was not delivered"
    done = threading.Event()
    publish_at_rate(bootstrap, topic, events, rate, done)
    return done
