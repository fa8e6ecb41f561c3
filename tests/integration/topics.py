"""Reading topics back in integration tests: a real consumer, drained until a count or a quiet period."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.kafka import make_consumer

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int


def drain(
    client_config: Mapping[str, str],
    topics: Sequence[str],
    expected: int | None = None,
    quiet_s: float = 5.0,
    timeout_s: float = 120.0,
    isolation: str = "read_uncommitted",
) -> list[Record]:
    """Everything in `topics` from the beginning: stop at `expected` records, or after `quiet_s` without
    any."""
    consumer = make_consumer(
        client_config, f"test-reader-{uuid.uuid4().hex[:8]}", {"isolation.level": isolation}
    )
    consumer.subscribe(list(topics))
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    last_seen = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(10_000, 0.5)
            for m in batch:
                if m.error() is None:
                    records.append(
                        Record(
                            m.topic(),
                            m.partition(),
                            m.offset(),
                            m.key(),
                            m.value(),
                            tuple(m.headers() or ()),
                            m.timestamp()[1],
                        )
                    )
            if batch:
                last_seen = time.monotonic()
            if expected is not None and len(records) >= expected:
                break
            if expected is None and time.monotonic() - last_seen > quiet_s and records:
                break
            if time.monotonic() - last_seen > max(quiet_s, 30.0):
                break
    finally:
        consumer.close()
    return records


def ridestream(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a person would."""
    import os

    return subprocess.run(
        [sys.executable, "-m", "stack.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
