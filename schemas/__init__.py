"""The wire contract of ridestream: ride events, predictions, topic names and their JSON Schemas."""

from __future__ import annotations

from schemas.base import SCHEMA_VERSION
from schemas.events import RIDE_EVENT, RideCompleted, RideEvent, RideProgress, RideStarted
from schemas.predictions import CostPrediction, DurationPrediction, Prediction, TipPrediction
from schemas.topics import RIDE_EVENTS_TOPIC, dead_letter_topic, prediction_topic

__all__ = [
    "RIDE_EVENT",
    "RIDE_EVENTS_TOPIC",
    "SCHEMA_VERSION",
    "CostPrediction",
    "DurationPrediction",
    "Prediction",
    "RideCompleted",
    "RideEvent",
    "RideProgress",
    "RideStarted",
    "TipPrediction",
    "dead_letter_topic",
    "prediction_topic",
]
