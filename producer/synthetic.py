"""Synthetic NYC taxi rides, calibrated to TLC statistics: the default ride source.

A machine without the TLC files still replays, trains and tests on rides that look like real ones. The
statistics come from `producer/calibration.json` (made by `python -m producer.calibrate` from green
2021-01/02); the money follows the NYC metered-fare rules. Output is a trip frame
(`producer.trips.TRIP_COLUMNS`), the same shape the TLC reader produces, so everything downstream treats both
sources alike. Seeded: the same seed gives the same rides.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from producer.trips import TLC_TIMEZONE, TRIP_COLUMNS, TripFrame

CALIBRATION_PATH = Path(__file__).with_name("calibration.json")

# The replayed period starts on a Monday so weekday shares map onto real dates.
PERIOD_START_LOCAL = pd.Timestamp("2021-03-01 00:00", tz=TLC_TIMEZONE)
PERIOD_DAYS = 28

# Bounds that keep every synthetic ride valid for the trip reader (producer/trips.py) and the contract.
MIN_MILES, MAX_MILES = 0.1, 60.0
MIN_MINUTES, MAX_MINUTES = 1.0, 180.0
MIN_MPH, MAX_MPH = 2.0, 60.0

# NYC metered fare (TLC rate card): $2.50 on entry, $0.50 per 1/5 mile above 12 mph or per minute below it.
FARE_INITIAL_USD = 2.50
FARE_PER_MILE_USD = 2.50
FARE_PER_SLOW_MINUTE_USD = 0.50
METER_SPEED_THRESHOLD_MPH = 12.0
JFK_FLAT_FARE_USD = 52.0
MTA_TAX_USD = 0.50
IMPROVEMENT_SURCHARGE_USD = 0.30
OVERNIGHT_SURCHARGE_USD = 0.50  # 8 pm to 6 am
PEAK_SURCHARGE_USD = 1.00  # weekdays 4 pm to 8 pm
TYPICAL_TOLL_USD = 6.12  # the most common bridge/tunnel toll in the records


@cache
def load_calibration(path: Path = CALIBRATION_PATH) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def local_pickup_time(pickup_utc: pd.Series[pd.Timestamp]) -> pd.Series[pd.Timestamp]:
    """Pickup times in New York local time: traffic, surcharges and demand follow the local clock."""
    return pickup_utc.dt.tz_convert(TLC_TIMEZONE)


def draw_codes(rng: np.random.Generator, shares: dict[str, float], size: int) -> np.ndarray:
    """Draw integer codes (JSON keys) with the calibrated shares."""
    codes = np.array([int(code) for code in shares], dtype=np.int64)
    weights = np.array(list(shares.values()), dtype=float)
    return rng.choice(codes, size=size, p=weights / weights.sum())


def draw_pickup_times(rng: np.random.Generator, size: int, calibration: dict[str, Any]) -> pd.Series:
    """Pickup instants (UTC) over the period, with the real hour-of-day and weekday profile."""
    weekday_shares = np.array(calibration["weekday_shares"])
    days = np.arange(PERIOD_DAYS)
    day_weights = weekday_shares[(PERIOD_START_LOCAL.weekday() + days) % 7]
    day = rng.choice(days, size=size, p=day_weights / day_weights.sum())
    hour_shares = np.array(calibration["hour_shares"])
    hour = rng.choice(24, size=size, p=hour_shares / hour_shares.sum())
    seconds = day * 86_400 + hour * 3600 + rng.integers(0, 3600, size=size)
    local = PERIOD_START_LOCAL.tz_localize(None) + pd.to_timedelta(seconds, unit="s")
    localized = pd.Series(local).dt.tz_localize(TLC_TIMEZONE, ambiguous="NaT", nonexistent="shift_forward")
    return localized.dt.tz_convert("UTC")


def draw_zone_pairs_and_distance(
    rng: np.random.Generator, size: int, calibration: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pickup zone, dropoff zone, miles): frequent pairs as observed, the tail from the zone marginals."""
    pairs = np.array(calibration["pairs"], dtype=float)
    from_top = rng.random(size) < calibration["top_pair_share"]
    chosen = rng.choice(len(pairs), size=size, p=pairs[:, 2] / pairs[:, 2].sum())
    pickup = np.where(
        from_top, pairs[chosen, 0], draw_codes(rng, calibration["pickup_zone_shares"], size)
    ).astype(np.int64)
    dropoff = np.where(
        from_top, pairs[chosen, 1], draw_codes(rng, calibration["dropoff_zone_shares"], size)
    ).astype(np.int64)
    mu = np.where(from_top, pairs[chosen, 3], calibration["global_log_distance_mu"])
    sigma = np.where(from_top, pairs[chosen, 4], calibration["global_log_distance_sigma"])
    miles = np.clip(np.exp(rng.normal(mu, sigma)), MIN_MILES, MAX_MILES)
    return pickup, dropoff, np.round(miles, 2)


def draw_minutes(
    rng: np.random.Generator,
    miles: npt.NDArray[np.float64],
    local_hour: np.ndarray,
    calibration: dict[str, Any],
) -> npt.NDArray[np.float64]:
    """Ride minutes from a speed that depends on the hour (traffic) and the distance (faster roads)."""
    speed = calibration["speed"]
    log_mph = (
        np.array(speed["hour_log_mph"])[local_hour]
        + speed["log_distance_elasticity"] * np.log(miles)
        + rng.normal(0.0, speed["residual_sigma"], miles.size)
    )
    mph: npt.NDArray[np.float64] = np.clip(np.exp(log_mph), MIN_MPH, MAX_MPH)
    return np.clip(miles / mph * 60.0, MIN_MINUTES, MAX_MINUTES)


def metered_fare(miles: np.ndarray, minutes: np.ndarray, rate_code: np.ndarray, factor: float) -> np.ndarray:
    """The meter: distance is charged while the cab moves faster than 12 mph, time while it is slower.

    `factor` is calibrated on real metered rides (see producer/calibrate.py)."""
    mph = miles / (minutes / 60.0)
    slow_share = np.clip(1.0 - mph / METER_SPEED_THRESHOLD_MPH, 0.0, 0.9)
    fare = (
        FARE_INITIAL_USD
        + FARE_PER_MILE_USD * miles * (1.0 - slow_share)
        + FARE_PER_SLOW_MINUTE_USD * minutes * slow_share
    ) * factor
    fare = np.where(rate_code == 2, JFK_FLAT_FARE_USD, fare)
    return np.round(fare * 2) / 2  # the meter clicks in 50-cent steps


def surcharges(local_hour: np.ndarray, weekday: np.ndarray) -> np.ndarray:
    overnight = (local_hour >= 20) | (local_hour < 6)
    peak = (weekday < 5) & (local_hour >= 16) & (local_hour < 20)
    return (
        MTA_TAX_USD
        + IMPROVEMENT_SURCHARGE_USD
        + np.where(overnight, OVERNIGHT_SURCHARGE_USD, 0.0)
        + np.where(peak, PEAK_SURCHARGE_USD, 0.0)
    )


def draw_tips(
    rng: np.random.Generator, fare: np.ndarray, payment_type: np.ndarray, calibration: dict[str, Any]
) -> np.ndarray:
    """Card riders tip a share of the fare drawn from the real distribution; cash tips are not recorded."""
    quantiles = np.array(calibration["card_tip_share_quantiles"])
    share = np.interp(rng.random(fare.size), np.linspace(0.0, 1.0, quantiles.size), quantiles)
    return np.where(payment_type == 1, np.round(fare * share, 2), 0.0)


def synthesize_trips(rides: int, seed: int = 42, calibration: dict[str, Any] | None = None) -> TripFrame:
    """`rides` synthetic trips as a trip frame, sorted by pickup time. Same seed, same rides."""
    calibration = calibration or load_calibration()
    rng = np.random.default_rng(seed)
    pickup_time = draw_pickup_times(rng, rides, calibration)
    local = local_pickup_time(pickup_time)
    local_hour, weekday = local.dt.hour.to_numpy(), local.dt.day_of_week.to_numpy()
    pickup_zone, dropoff_zone, miles = draw_zone_pairs_and_distance(rng, rides, calibration)
    minutes = draw_minutes(rng, miles, local_hour, calibration)
    rate_code = draw_codes(rng, calibration["rate_code_shares"], rides)
    payment_type = draw_codes(rng, calibration["payment_type_shares"], rides)
    fare = metered_fare(miles, minutes, rate_code, calibration["fare_rule_factor"])
    tip = draw_tips(rng, fare, payment_type, calibration)
    tolls = np.where(rng.random(rides) < calibration["toll_share"], TYPICAL_TOLL_USD, 0.0)
    total = np.round(fare + surcharges(local_hour, weekday) + tip + tolls, 2)
    trips = pd.DataFrame(
        {
            "ride_id": [f"syn{seed}-{index:07d}" for index in range(rides)],
            "pickup_time": pickup_time,
            "dropoff_time": pickup_time + pd.to_timedelta(np.round(minutes * 60), unit="s"),
            "pickup_zone": pickup_zone,
            "dropoff_zone": dropoff_zone,
            "trip_distance_miles": miles,
            "passenger_count": draw_codes(rng, calibration["passenger_count_shares"], rides),
            "payment_type": payment_type,
            "vendor_id": draw_codes(rng, calibration["vendor_id_shares"], rides),
            "rate_code": rate_code,
            "trip_type": draw_codes(rng, calibration["trip_type_shares"], rides),
            "fare_amount_usd": fare,
            "tip_amount_usd": tip,
            "total_amount_usd": total,
        }
    )
    trips = trips.sort_values("pickup_time", kind="stable").reset_index(drop=True)
    return TripFrame(trips=trips.loc[:, list(TRIP_COLUMNS)], skipped=Counter(), imputed=Counter())
