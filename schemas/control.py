"""Records of the control topic (`ridestream.control`): the fleet's desired state.

The topic is compacted and keyed, so its latest record per key is the state and an instance that starts (or
restarts) reads it to the end before it scores anything. Keys:

    serving/<model>    ServingState: which registry version each alias of <model> points at; every service
                       that loads <model> serves its `champion`
    rollout/<service>  RolloutState: the deployment in progress (or last finished) for <service>
    switch/<service>/<partition>/<epoch>@<offset>[/green]
                       SwitchRecord: where an instance applied a rollout epoch, in its outputs' transaction
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from schemas.base import Contract, UtcDatetime

SERVING_PREFIX = "serving/"
RegistryVersion = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[0-9]+$")]


class ServingState(Contract):
    """What the registry's aliases of one model say, published by `ridestream models alias`."""

    model: str = Field(min_length=1, max_length=64)
    aliases: dict[str, RegistryVersion] = Field(description="alias → registry version, e.g. champion → 3")
    updated_at: UtcDatetime
    updated_by: str = Field(default="", max_length=256, description="who moved it (user@host)")

    @property
    def key(self) -> str:
        return serving_key(self.model)

    def champion(self) -> str | None:
        return self.aliases.get("champion")


def serving_key(model: str) -> str:
    return f"{SERVING_PREFIX}{model}"


ROLLOUT_PREFIX = "rollout/"
STATUS_PREFIX = "status/"
SWITCH_PREFIX = "switch/"
Strategy = Literal["blue-green", "canary", "rolling", "shadow", "ab"]
STRATEGIES: tuple[str, ...] = ("blue-green", "canary", "rolling", "shadow", "ab")
RolloutStatus = Literal["running", "promoted", "rolled_back", "aborted"]
# The two deployments of a service for blue/green: each its own consumer group, one of them live (its
# predictions on the topic users read), the other warm on the shadow topic. An instance is "blue" unless
# configured otherwise, so a fleet that never ran a blue/green is all blue and all live.
Deployment = Literal["blue", "green"]
DEPLOYMENTS: tuple[str, ...] = ("blue", "green")
MAX_HANDOVERS = 16
Action = Literal["start", "advance", "promote", "rollback", "abort"]
# The canary's default shares of rides per step.
CANARY_STEPS = (0.05, 0.25, 0.5, 1.0)
MAX_DECISIONS = 30


class Gates(Contract):
    """What a canary step must show before it advances (docs/deployments.md)."""

    min_rides: int = Field(default=200, ge=1, description="completed rides judged per version in the step")
    tolerance: float = Field(
        default=0.10, ge=0, le=10, description="the challenger's RMSE may exceed the champion's by this share"
    )
    max_unscoreable_rate: float = Field(default=0.01, ge=0, le=1)
    max_p99_ms: float = Field(default=1000.0, gt=0, description="event-to-prediction p99 of every instance")


class Decision(Contract):
    at: UtcDatetime
    action: Action
    step: int
    reason: str = Field(max_length=2000)
    evidence: dict[str, Any] = Field(default_factory=dict)


class Handover(Contract):
    """From rollout `epoch` on, `to` is the live deployment. Each input partition changes hands at the offset
    where the deployment live before it first scored under an epoch ≥ `epoch` (its switch records): the
    one before the cut-over publishes for users, the one after it from there (docs/deployments.md)."""

    epoch: int = Field(ge=1)
    to: Deployment


def other_deployment(deployment: str) -> Deployment:
    return "green" if deployment == "blue" else "blue"


class RolloutState(Contract):
    """One service's rollout: who serves which rides, and the decisions taken. Every change bumps `epoch`;
    each instance records the input offset at which it applied an epoch (key switch/...)."""

    service: str = Field(min_length=1, max_length=64)
    strategy: Strategy
    champion: dict[str, RegistryVersion] = Field(description="model → registry version users see")
    challenger: dict[str, RegistryVersion] = Field(description="model → registry version being tried")
    steps: list[Annotated[float, Field(ge=0, le=1)]] = Field(min_length=1)
    step: int = Field(default=0, ge=0)
    status: RolloutStatus = "running"
    epoch: int = Field(ge=1)
    gates: Gates = Field(default_factory=Gates)
    step_started_at: UtcDatetime
    # "model/registry version" → the artifact version its predictions carry (what the evaluator reports)
    artifacts: dict[str, str] = Field(default_factory=dict)
    # The evaluator's fleet figures, "model/artifact version" → sums (count, Σe, Σ|e|, Σe², Σe⁴), at the
    # step's start and at the rollout's start: a step's evidence is the difference from these.
    baseline: dict[str, list[float]] = Field(default_factory=dict)
    start_baseline: dict[str, list[float]] = Field(default_factory=dict)
    decisions: list[Decision] = Field(default_factory=list)
    # rolling: the instances (by instance name) serving the challenger so far, in the order they switched
    switched: list[str] = Field(default_factory=list)
    # Who publishes for users: the deployment live before the first of `handovers`, and the handovers,
    # carried over from the rollouts before (an instance still behind an old cut-over needs them)
    live: Deployment = "blue"
    handovers: list[Handover] = Field(default_factory=list, max_length=MAX_HANDOVERS)
    # blue/green: the deployment that serves the challenger (the one not live when the rollout started)
    challenger_deployment: Deployment = "green"
    updated_at: UtcDatetime

    @property
    def key(self) -> str:
        return rollout_key(self.service)

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def owner(self) -> Deployment:
        """The deployment live now (the last handover's, or the one live at the start)."""
        return self.handovers[-1].to if self.handovers else self.live

    def share(self) -> float:
        """The challenger's share of rides now (0 once the rollout is over)."""
        return self.steps[min(self.step, len(self.steps) - 1)] if self.running else 0.0


class SwitchRecord(Contract):
    """Written by an instance, in the transaction of the batch it applies to: from `offset` on, `partition`
    of `topic` is scored under rollout `epoch`."""

    service: str
    topic: str
    partition: int
    offset: int
    epoch: int
    instance: str
    deployment: Deployment = "blue"


def rollout_key(service: str) -> str:
    return f"{ROLLOUT_PREFIX}{service}"


def switch_key(service: str, partition: int, epoch: int, offset: int, deployment: str = "blue") -> str:
    """Unique per record (a compacted topic keeps one value per key): blue's keys are the ones from before
    blue/green existed; green's carry its name."""
    key = f"{SWITCH_PREFIX}{service}/{partition}/{epoch}@{offset}"
    return key if deployment == "blue" else f"{key}/{deployment}"
