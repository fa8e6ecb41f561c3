"""Derive the synthetic generator's calibration from real TLC trip files.

    python -m producer.calibrate ../shared/data/green_tripdata_2021-01.parquet \\
        ../shared/data/green_tripdata_2021-02.parquet

Writes `producer/calibration.json`: the statistics `producer/synthetic.py` draws from (zone pairs, distance
per pair, pickup hour and weekday, speed by hour and distance, payment and tipping, codes). Only aggregates
are kept, no ride, so the file is small and can ship with the package while the TLC files themselves do not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from producer.synthetic import CALIBRATION_PATH, local_pickup_time, metered_fare
from producer.trips import read_many

# Zone pairs kept by name; the rest of the mass is drawn as (pickup zone, dropoff zone) independently.
TOP_PAIRS = 3000
TIP_SHARE_QUANTILES = np.linspace(0.0, 1.0, 41)


def shares(values: pd.Series) -> dict[str, float]:
    """Value → share of rows, keys as strings (JSON objects)."""
    counts = values.value_counts(normalize=True).sort_index()
    return {str(int(key)): round(float(share), 6) for key, share in zip(counts.index, counts)}


def pair_statistics(trips: pd.DataFrame) -> dict[str, Any]:
    """The most frequent zone pairs with their share and log-distance median and spread."""
    log_distance = np.log(trips["trip_distance_miles"])
    grouped = log_distance.groupby([trips["pickup_zone"], trips["dropoff_zone"]])
    stats = pd.DataFrame({"count": grouped.size(), "mu": grouped.median(), "sigma": grouped.std()})
    stats = stats.sort_values("count", ascending=False)
    top = stats.head(TOP_PAIRS)
    global_sigma = float(log_distance.std())
    return {
        "pairs": [
            [
                int(pu),
                int(do),
                int(count),
                round(float(mu), 4),
                round(float(sigma) if count > 5 and np.isfinite(sigma) else global_sigma, 4),
            ]
            for (pu, do), count, mu, sigma in zip(top.index, top["count"], top["mu"], top["sigma"])
        ],
        "top_pair_share": round(float(top["count"].sum() / stats["count"].sum()), 6),
        "global_log_distance_mu": round(float(log_distance.median()), 4),
        "global_log_distance_sigma": round(global_sigma, 4),
    }


def speed_model(trips: pd.DataFrame, local: pd.Series) -> dict[str, Any]:
    """log(mph) = hour effect + elasticity × log(distance) + noise: long trips use faster roads."""
    minutes = (trips["dropoff_time"] - trips["pickup_time"]).dt.total_seconds() / 60
    log_mph = np.log(trips["trip_distance_miles"] / (minutes / 60))
    log_distance = np.log(trips["trip_distance_miles"])
    hours = local.dt.hour
    design = np.column_stack(
        [pd.get_dummies(hours).reindex(columns=range(24), fill_value=0).to_numpy(float), log_distance]
    )
    coefficients, *_ = np.linalg.lstsq(design, log_mph.to_numpy(), rcond=None)
    residual = log_mph.to_numpy() - design @ coefficients
    return {
        "hour_log_mph": [round(float(c), 4) for c in coefficients[:24]],
        "log_distance_elasticity": round(float(coefficients[24]), 4),
        "residual_sigma": round(float(residual.std()), 4),
    }


def tipping(trips: pd.DataFrame) -> dict[str, Any]:
    """Card riders' tip as a share of the fare, as quantiles (cash tips are not recorded by the TLC)."""
    card = trips[(trips["payment_type"] == 1) & (trips["fare_amount_usd"] > 0)]
    share = (card["tip_amount_usd"] / card["fare_amount_usd"]).clip(0, 1)
    return {"card_tip_share_quantiles": [round(float(q), 4) for q in share.quantile(TIP_SHARE_QUANTILES)]}


def fare_rule_factor(trips: pd.DataFrame) -> float:
    """Median of recorded fare over the rate-card rule, on metered rides (rows with TLC codes).

    The rule sees only a ride's average speed, not the time it spent below 12 mph within the ride, so it
    undercharges slow stretches; this one factor absorbs that."""
    metered = trips[(trips["payment_type"] != 5) & (trips["rate_code"] == 1)]
    minutes = (metered["dropoff_time"] - metered["pickup_time"]).dt.total_seconds().to_numpy() / 60
    rule = metered_fare(
        metered["trip_distance_miles"].to_numpy(), minutes, metered["rate_code"].to_numpy(), 1.0
    )
    return round(float(np.median(metered["fare_amount_usd"].to_numpy() / rule)), 4)


def calibrate(paths: list[Path]) -> dict[str, Any]:
    trips = read_many(paths).trips
    local = local_pickup_time(trips["pickup_time"])
    has_codes = trips["payment_type"] != 5  # rows whose codes the TLC left empty were imputed as "unknown"
    return {
        "source": [path.name for path in paths],
        "rides": len(trips),
        "hour_shares": [
            round(float(s), 6)
            for s in local.dt.hour.value_counts(normalize=True).reindex(range(24), fill_value=0)
        ],
        "weekday_shares": [
            round(float(s), 6)
            for s in local.dt.day_of_week.value_counts(normalize=True).reindex(range(7), fill_value=0)
        ],
        **pair_statistics(trips),
        "pickup_zone_shares": shares(trips["pickup_zone"]),
        "dropoff_zone_shares": shares(trips["dropoff_zone"]),
        "speed": speed_model(trips, local),
        "payment_type_shares": shares(trips.loc[has_codes, "payment_type"]),
        "passenger_count_shares": shares(trips.loc[has_codes, "passenger_count"]),
        "rate_code_shares": shares(trips.loc[has_codes, "rate_code"]),
        "trip_type_shares": shares(trips.loc[has_codes, "trip_type"]),
        "vendor_id_shares": shares(trips["vendor_id"]),
        "toll_share": round(
            float(
                (trips["total_amount_usd"] - trips["fare_amount_usd"] - trips["tip_amount_usd"] > 8).mean()
            ),
            6,
        ),
        "fare_rule_factor": fare_rule_factor(trips),
        **tipping(trips),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=CALIBRATION_PATH)
    args = parser.parse_args()
    args.out.write_text(json.dumps(calibrate(args.paths), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
