"""Scoring during a rollout: which version scores a ride, decided by a stable hash of its ride_id.

The unit is the ride: every event of one ride hashes to the same bucket, so its start estimate and each
correction come from one version, and comparisons between versions are between rides. The bucket is the
first 8 bytes of BLAKE2b(ride_id) as a fraction of 2^64: the same in every process, language and restart.

    split    (canary, A/B) rides below `share` go to the challenger; both publish to the topic users read,
             each prediction marked with its variant (field and `ridestream.variant` header)
    shadow   the champion scores every ride for users; the challenger scores rides below `share` too and
             publishes to the shadow topic only
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec

from consumers.scoring import EncodedPrediction, Event, ScoreResult
from shared.protocols import Scorer

VARIANT_HEADER = "ridestream.variant"
EPOCH_HEADER = "ridestream.epoch"
Mode = Literal["split", "shadow"]
Variant = Literal["champion", "challenger"]
_BUCKETS = float(1 << 64)


def ride_bucket(ride_id: str) -> float:
    """The ride's place in [0, 1): stable across processes (unlike Python's salted hash)."""
    digest = hashlib.blake2b(ride_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _BUCKETS


def with_variant(
    prediction: EncodedPrediction, variant: Variant, epoch: int, shadow: bool = False
) -> EncodedPrediction:
    """The prediction marked with the variant that made it. `variant` is the contract's last common field,
    so it goes right before `prediction_type`, where the contract's own encoder puts it."""
    value = prediction.value.replace(
        b',"prediction_type":', b',"variant":"' + variant.encode() + b'","prediction_type":', 1
    )
    headers: list[tuple[str, str | bytes | None]] = [
        (VARIANT_HEADER, variant.encode()),
        (EPOCH_HEADER, str(epoch).encode()),
    ]
    return msgspec.structs.replace(prediction, value=value, headers=headers, shadow=shadow)


class RoutedScorer:
    """Two scorers of one service behind the Scorer seam, routing each ride by its bucket."""

    def __init__(self, champion: Scorer, challenger: Scorer, share: float, mode: Mode, epoch: int) -> None:
        self.champion = champion
        self.challenger = challenger
        self.share = share
        self.mode = mode
        self.epoch = epoch
        self.scored_event_types = champion.scored_event_types
        self.model_name = champion.model_name
        self.model_version = f"{champion.model_version}|{challenger.model_version}"
        # predictions and unscoreable events per variant, for the instance's status (rollout gates)
        self.predicted: Counter[str] = Counter()
        self.unscoreable: Counter[str] = Counter()

    @property
    def parts(self) -> tuple[Scorer, Scorer]:
        return self.champion, self.challenger

    def score(self, events: Sequence[Any], produced_at: datetime) -> ScoreResult:
        to_challenger = [ride_bucket(event.ride_id) < self.share for event in events]
        if self.mode == "shadow":
            return self._shadow(events, to_challenger, produced_at)
        champion_at = [i for i, chosen in enumerate(to_challenger) if not chosen]
        challenger_at = [i for i, chosen in enumerate(to_challenger) if chosen]
        result = ScoreResult()
        for variant, scorer, positions in (
            ("champion", self.champion, champion_at),
            ("challenger", self.challenger, challenger_at),
        ):
            if not positions:
                continue
            part = scorer.score([events[i] for i in positions], produced_at)
            result.predictions.extend(with_variant(p, variant, self.epoch) for p in part.predictions)  # type: ignore[arg-type]
            result.failures.extend((positions[i], reason) for i, reason in part.failures)
            self.predicted[variant] += len(part.predictions)
            self.unscoreable[variant] += len(part.failures)
        return result

    def _shadow(
        self, events: Sequence[Event], to_challenger: list[bool], produced_at: datetime
    ) -> ScoreResult:
        main = self.champion.score(events, produced_at)
        chosen = [event for event, picked in zip(events, to_challenger) if picked]
        side = self.challenger.score(chosen, produced_at) if chosen else ScoreResult()
        self.predicted["champion"] += len(main.predictions)
        self.unscoreable["champion"] += len(main.failures)
        self.predicted["challenger"] += len(side.predictions)
        # A challenger's failure is counted, never dead-lettered: the champion scored that event for users.
        self.unscoreable["challenger"] += len(side.failures)
        shadows = [with_variant(p, "challenger", self.epoch, shadow=True) for p in side.predictions]  # type: ignore[arg-type]
        return ScoreResult(list(main.predictions) + shadows, list(main.failures))  # type: ignore[arg-type]
