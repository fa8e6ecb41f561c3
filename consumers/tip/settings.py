"""Settings of the tip service (environment prefix TIP_)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from schemas.topics import dead_letter_topic, prediction_topic
from shared.service import ServiceSettings


class TipSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TIP_", frozen=True, extra="ignore")

    service: str = "tip"
    group_id: str = "ridestream-tip"
    output_topic: str = prediction_topic("tip")
    dlq_topic: str = dead_letter_topic("tip")
