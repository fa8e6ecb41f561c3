"""The batch report's arithmetic: actuals and local hours joined to predictions, and the drift index."""

from __future__ import annotations

import numpy as np
import pandas as pd

from consumers.batch.report import joined, psi


def test_each_prediction_gets_its_rides_actual_and_new_york_pickup_hour() -> None:
    rides = pd.DataFrame({
        "ride_id": ["a", "b"],
        # 14:30 UTC in February is 09:30 in New York; 03:10 UTC is 22:10 the day before.
        # (microsecond timestamps, as read back from the database)
        "pickup_time": pd.to_datetime(["2021-02-01T14:30Z", "2021-02-02T03:10Z"], utc=True).as_unit("us"),
        "dropoff_time": pd.to_datetime(["2021-02-01T14:42Z", "2021-02-02T03:40Z"], utc=True).as_unit("us"),
        "tip_amount_usd": [1.5, 0.0], "total_amount_usd": [12.0, 30.0],
    })  # fmt: skip
    predictions = pd.DataFrame({
        "ride_id": ["a", "a", "b"], "model_name": ["duration", "tip", "cost"], "model_version": ["v"] * 3,
        "prediction": [10.0, 2.0, 33.0],
    })  # fmt: skip
    frame = joined(predictions, rides).set_index(["ride_id", "model_name"])
    assert frame.loc[("a", "duration"), "actual"] == 12.0 and frame.loc[("a", "duration"), "error"] == -2.0
    assert frame.loc[("a", "tip"), "actual"] == 1.5 and frame.loc[("b", "cost"), "error"] == 3.0
    assert list(frame["hour"]) == [9, 9, 22]


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shifted_one() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=20_000)
    assert psi(reference, rng.normal(size=20_000)) < 0.01
    assert psi(reference, rng.normal(loc=1.0, size=20_000)) > 0.25
    assert psi(np.ones(100), np.ones(50)) == 0.0
