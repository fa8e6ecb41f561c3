"""Producer settings: environment (PRODUCER_*), overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topics import RIDE_EVENTS_TOPIC

if TYPE_CHECKING:  # for annotations only: producer.source pulls in numpy and pandas
    from producer.source import PacingMode

DEFAULT_SYNTHETIC_RIDES = 2000


class ProducerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRODUCER_", frozen=True, extra="ignore")

    data: list[Path] = Field(default_factory=list, description="TLC trip files; empty: synthetic rides")
    rides: int | None = Field(
        default=None, ge=1, description="at most this many rides (synthetic default 2000)"
    )
    rate: float | None = Field(default=None, gt=0, description="fixed events/s; None: as fast as possible")
    speedup: float | None = Field(
        default=None, gt=0, description="event-time replay, this many times real time"
    )
    topic: str = RIDE_EVENTS_TOPIC
    partitions: int = Field(default=6, ge=1, le=1000, description="partitions when the topic is created")
    replication_factor: int = Field(
        default=-1, ge=-1, description="when the topic is created; -1: the cluster default"
    )
    progress_interval_s: float = Field(default=60.0, gt=0, description="ride time between progress events")
    seed: int = 42

    @model_validator(mode="after")
    def _one_pacing_mode(self) -> Self:
        if self.rate is not None and self.speedup is not None:
            raise ValueError("choose one pacing mode: --rate EVENTS_PER_S or --speedup X, not both")
        return self

    @property
    def pacing_mode(self) -> PacingMode:
        if self.rate is not None:
            return "rate"
        if self.speedup is not None:
            return "event_time"
        return "max"
