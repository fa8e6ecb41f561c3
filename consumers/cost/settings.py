"""Settings of the cost service (environment prefix COST_)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from schemas.topics import dead_letter_topic, prediction_topic
from shared.service import ServiceSettings


class CostSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="COST_", frozen=True, extra="ignore")

    service: str = "cost"
    group_id: str = "ridestream-cost"
    output_topic: str = prediction_topic("cost")
    dlq_topic: str = dead_letter_topic("cost")
