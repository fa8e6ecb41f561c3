"""A ride's simulated path: how far it has gone at each progress event.

TLC records hold only the pickup, the dropoff and the metered distance, so the `ride_progress` events a
replay publishes need a path between them. The path has a variable speed (traffic, lights, stops) and ends
exactly at the recorded distance and dropoff time. The producer replays it and training samples it, through
this one function, so the dynamic-duration model learns from the same kind of progress it is served.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Speed is drawn per segment of this many seconds of ride time: roughly a city block or a light cycle.
SEGMENT_S = 30.0
# Log-normal spread of segment speeds around the ride's average, and the share of segments spent stopped.
SPEED_SIGMA = 0.5
STOP_PROBABILITY = 0.12
STOPPED_SPEED_FACTOR = 0.05


def progress_times(duration_s: float, interval_s: float) -> npt.NDArray[np.float64]:
    """Elapsed seconds of each progress event: every `interval_s`, strictly before the dropoff."""
    count = max(0, int(np.ceil(duration_s / interval_s)) - 1)
    return np.arange(1, count + 1, dtype=float) * interval_s


def covered_distance(
    elapsed_s: npt.NDArray[np.float64], duration_s: float, distance_miles: float, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """Miles covered at each of `elapsed_s`, on a variable-speed path from 0 at pickup to the full distance
    at `duration_s`. Monotone non-decreasing."""
    segments = max(1, int(np.ceil(duration_s / SEGMENT_S)))
    speeds = rng.lognormal(0.0, SPEED_SIGMA, segments)
    speeds[rng.random(segments) < STOP_PROBABILITY] *= STOPPED_SPEED_FACTOR
    edges = np.linspace(0.0, duration_s, segments + 1)
    cumulative = np.concatenate(([0.0], np.cumsum(speeds)))
    share: npt.NDArray[np.float64] = np.interp(elapsed_s, edges, cumulative / cumulative[-1])
    return np.round(share * distance_miles, 4)


def simulate_progress(
    duration_s: float, distance_miles: float, interval_s: float, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(elapsed seconds, miles covered) of every progress event of one ride."""
    elapsed = progress_times(duration_s, interval_s)
    return elapsed, covered_distance(elapsed, duration_s, distance_miles, rng)
