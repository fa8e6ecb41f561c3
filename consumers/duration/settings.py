"""Settings of the dynamic-duration service (environment prefix DURATION_)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from schemas.topics import dead_letter_topic, prediction_topic
from shared.service import ServiceSettings


class DurationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DURATION_", frozen=True, extra="ignore")

    service: str = "duration"
    group_id: str = "ridestream-duration"
    output_topic: str = prediction_topic("duration")
    dlq_topic: str = dead_letter_topic("duration")
