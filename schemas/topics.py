"""Topic names: defined here once, used by the producer, every service, the tests and docker-compose."""

from __future__ import annotations

RIDE_EVENTS_TOPIC = "rides.events"


def prediction_topic(service: str) -> str:
    """Default output topic of a scoring service."""
    return f"predictions.{service}"


def dead_letter_topic(service: str) -> str:
    """Default dead-letter topic of a scoring service: bad input goes here with the reason."""
    return f"dlq.{service}"
