"""Topic names: defined here once, used by the producer, every service, the tests and docker-compose."""

from __future__ import annotations

from typing import Literal, get_args

ServiceName = Literal["duration", "tip", "cost"]
SERVICES: tuple[ServiceName, ...] = get_args(ServiceName)

RIDE_EVENTS_TOPIC = "rides.events"


def prediction_topic(service: ServiceName) -> str:
    """Default output topic of a scoring service."""
    return f"predictions.{service}"


def dead_letter_topic(service: ServiceName) -> str:
    """Default dead-letter topic of a scoring service: bad input goes here with the reason."""
    return f"dlq.{service}"
