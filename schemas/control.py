"""Records of the control topic (`ridestream.control`): the fleet's desired state.

The topic is compacted and keyed, so its latest record per key is the state and an instance that starts (or
restarts) reads it to the end before it scores anything. Keys:

    serving/<model>    ServingState: which registry version each alias of <model> points at; every service
                       that loads <model> serves its `champion`
"""

from __future__ import annotations

from typing import Annotated

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
