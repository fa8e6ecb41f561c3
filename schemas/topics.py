"""Topic names: defined here once, used by the producer, every service, the tests and docker-compose."""

from __future__ import annotations

RIDE_EVENTS_TOPIC = "rides.events"
# The fleet's desired state (which model version serves, later the rollout in progress): compacted, one
# partition, so every instance reads one ordered log (docs/models.md).
CONTROL_TOPIC = "ridestream.control"
# The evaluator's live error figures, one record per input partition (compacted; docs/models.md).
EVALUATIONS_TOPIC = "ridestream.evaluations"


def prediction_topic(service: str) -> str:
    """Default output topic of a scoring service."""
    return f"predictions.{service}"


def shadow_topic(output_topic: str) -> str:
    """Where a shadow rollout's challenger publishes beside `output_topic` (predictions.tip →
    predictions.tip.shadow): read by the evaluator, never by users."""
    return f"{output_topic}.shadow"


def dead_letter_topic(service: str) -> str:
    """Default dead-letter topic of a scoring service: bad input goes here with the reason."""
    return f"dlq.{service}"
