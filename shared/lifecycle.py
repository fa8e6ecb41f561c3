"""SIGTERM/SIGINT → a stop event the run loop checks between batches.

The first signal asks for a clean stop (finish the batch, flush, commit, leave the group); a second Ctrl+C
restores Python's default handler so an impatient person can still interrupt a stuck shutdown.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


def install_stop_handlers(stop: threading.Event) -> None:
    """Route SIGTERM and SIGINT to `stop`. Only valid in the main thread."""

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
