"""`ridestream batch report`: the predictions table as one self-contained HTML dashboard.

    predictions ⋈ rides (actuals) ──► per model: predicted vs actual, error by hour of day (New York time),
                                      error by borough (pickup zone), error per version over time
    rides: reference vs scored period ──► drift of each input feature (PSI)

Plots are matplotlib SVG inlined in the page: one file, no scripts, no network, readable anywhere.

Actuals: a ride's minutes from pickup to dropoff (duration), its recorded tip (tip), its total (cost); rides
without one are left out of that model's errors. Drift is the population stability index of each start
feature, over ten quantile bins of the reference (the model's training file when given, else the earliest
fifth of the period's rides): below 0.1 stable, 0.1-0.25 a shift worth a look, above 0.25 a shift that
calls for retraining (the usual reading of PSI).
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from consumers.features import (
    START_FEATURES,
    epoch_seconds,
    local_hour_and_weekday,
    start_columns_from_trips,
    start_features,
)

# The number the batch row holds for each model, and the ride's actual to measure it against.
ACTUALS: dict[str, str] = {"duration": "actual_minutes", "tip": "tip_amount_usd", "cost": "total_amount_usd"}
UNITS: dict[str, str] = {"duration": "min", "tip": "USD", "cost": "USD"}
SCATTER_POINTS = 4000
PSI_BINS = 10
PSI_FLOOR = 1e-4  # an empty bin's share, so the logarithm stays finite
PSI_WATCH, PSI_ACT = 0.1, 0.25


@dataclass(frozen=True)
class Report:
    html: str
    models: tuple[str, ...]
    rides: int


def joined(predictions: pd.DataFrame, rides: pd.DataFrame) -> pd.DataFrame:
    """One row per prediction with its ride's actuals and features."""
    rides = rides.copy()
    rides["actual_minutes"] = (rides["dropoff_time"] - rides["pickup_time"]).dt.total_seconds() / 60.0
    frame = predictions.drop(columns=["pickup_time"], errors="ignore").merge(rides, on="ride_id", how="inner")
    frame["actual"] = np.nan
    for model, column in ACTUALS.items():
        mask = frame["model_name"] == model
        frame.loc[mask, "actual"] = frame.loc[mask, column]
    frame["error"] = frame["prediction"] - frame["actual"]
    hour, _weekday = local_hour_and_weekday(epoch_seconds(frame["pickup_time"]))
    frame["hour"] = np.floor(hour).astype(int)
    return frame


def psi(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of `current` against `reference`, on the reference's quantile bins."""
    reference, current = reference[np.isfinite(reference)], current[np.isfinite(current)]
    if len(reference) == 0 or len(current) == 0:
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:  # a constant feature: drift is any value it did not have
        same = float(np.mean(current == reference[0]))
        return 0.0 if same == 1.0 else float((same - 1) * np.log(max(same, PSI_FLOOR)))
    inner = edges[1:-1]
    ref = np.bincount(np.searchsorted(inner, reference, side="right"), minlength=len(edges) - 1)
    cur = np.bincount(np.searchsorted(inner, current, side="right"), minlength=len(edges) - 1)
    p = np.maximum(ref / ref.sum(), PSI_FLOOR)
    q = np.maximum(cur / cur.sum(), PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def drift(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, float]:
    ref = start_features(start_columns_from_trips(reference))
    cur = start_features(start_columns_from_trips(current))
    return {name: round(psi(ref[:, i], cur[:, i]), 4) for i, name in enumerate(START_FEATURES)}


def _svg(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # (the XML prolog and DOCTYPE are not allowed inside HTML)


def _figures(
    frame: pd.DataFrame, boroughs: Mapping[int, str], drifted: Mapping[str, float]
) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: list[tuple[str, str]] = []
    measured = frame.dropna(subset=["actual"])
    models = sorted(measured["model_name"].unique())
    if models:
        figure, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4), squeeze=False)
        for axis, model in zip(axes[0], models):
            rows = measured[measured["model_name"] == model]
            rows = rows.sample(min(len(rows), SCATTER_POINTS), random_state=0)
            axis.scatter(rows["actual"], rows["prediction"], s=3, alpha=0.3)
            top = float(np.nanquantile(rows[["actual", "prediction"]].to_numpy(), 0.99)) if len(rows) else 1.0
            axis.plot([0, top], [0, top], color="black", linewidth=1)
            axis.set(xlim=(0, top), ylim=(0, top), xlabel=f"actual ({UNITS.get(model, '')})",
                     ylabel="predicted", title=model)  # fmt: skip
        plots.append(("Predicted against actual", _svg(figure)))

        figure, axis = plt.subplots(figsize=(8, 3.5))
        for model in models:
            by_hour = (
                measured[measured["model_name"] == model]
                .groupby("hour")["error"]
                .apply(lambda e: e.abs().mean())
            )
            axis.plot(by_hour.index, by_hour.to_numpy(), marker="o", label=model)
        axis.set(xlabel="pickup hour (New York)", ylabel="mean absolute error", xticks=range(0, 24, 2))
        axis.legend()
        plots.append(("Error by hour of day", _svg(figure)))

        if boroughs:
            figure, axis = plt.subplots(figsize=(8, 3.5))
            with_borough = measured.assign(borough=measured["pickup_zone"].map(boroughs).fillna("Unknown"))
            table = (
                with_borough.groupby(["borough", "model_name"])["error"]
                .apply(lambda e: e.abs().mean())
                .unstack()
            )
            table.plot.bar(ax=axis, rot=0)
            axis.set(xlabel="pickup borough", ylabel="mean absolute error")
            plots.append(("Error by borough", _svg(figure)))

        figure, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.5), squeeze=False)
        for axis, model in zip(axes[0], models):
            rows = measured[measured["model_name"] == model]
            day = rows["pickup_time"].dt.floor("D")
            for version, daily in (
                rows.groupby([rows["model_version"], day])["error"]
                .apply(lambda e: e.abs().mean())
                .groupby(level=0)
            ):
                axis.plot(daily.index.get_level_values(1), daily.to_numpy(), marker=".", label=version)
            axis.set(title=model, ylabel="mean absolute error")
            axis.tick_params(axis="x", labelrotation=45)
            axis.legend(title="version", fontsize="small")
        plots.append(("Error per model version over time", _svg(figure)))

    if drifted:
        figure, axis = plt.subplots(figsize=(8, 3.5))
        names = list(drifted)
        values = [drifted[n] if np.isfinite(drifted[n]) else 0.0 for n in names]
        colors = [
            "tab:red" if v > PSI_ACT else "tab:orange" if v > PSI_WATCH else "tab:green" for v in values
        ]
        axis.bar(names, values, color=colors)
        axis.axhline(PSI_WATCH, color="tab:orange", linestyle="--", linewidth=1)
        axis.axhline(PSI_ACT, color="tab:red", linestyle="--", linewidth=1)
        axis.set(ylabel="PSI")
        axis.tick_params(axis="x", labelrotation=45)
        plots.append(("Input drift (population stability index)", _svg(figure)))
    return plots


def summary_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for model, group in frame.groupby("model_name"):
        errors = group["error"].dropna()
        rows.append({
            "model": model, "predictions": len(group), "with actuals": len(errors),
            "versions": ", ".join(sorted(group["model_version"].unique())),
            "MAE": round(float(errors.abs().mean()), 3) if len(errors) else None,
            "RMSE": round(float(np.sqrt((errors**2).mean())), 3) if len(errors) else None,
        })  # fmt: skip
    return rows


def render(
    predictions: pd.DataFrame,
    rides: pd.DataFrame,
    reference: pd.DataFrame | None = None,
    boroughs: Mapping[int, str] | None = None,
    title: str = "ridestream batch predictions",
) -> Report:
    """The dashboard of `predictions` (rows of the predictions table) against `rides` (the rides table)."""
    frame = joined(predictions, rides)
    period = rides.sort_values("pickup_time")
    if reference is None:  # the earliest fifth of the period as the reference
        cut = max(1, len(period) // 5)
        reference, period = period.iloc[:cut], period.iloc[cut:]
    drifted = drift(reference, period) if len(reference) and len(period) else {}
    plots = _figures(frame, boroughs or {}, drifted)
    rows = summary_rows(frame)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (rows[0] if rows else {}))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>" for row in rows
    )
    drift_rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{v}</td></tr>" for n, v in drifted.items())
    sections = "".join(f"<section><h2>{html.escape(name)}</h2>{svg}</section>" for name, svg in plots)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
section{{margin:2em 0}} svg{{max-width:100%;height:auto}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<p>{len(rides):,} rides, {len(predictions):,} predictions;
generated {datetime.now(UTC).isoformat(timespec="seconds")}.</p>
<h2>Models</h2><table><tr>{head}</tr>{body}</table>
{sections}
<h2>Drift, per feature</h2><table><tr><th>feature</th><th>PSI</th></tr>{drift_rows}</table>
</body></html>
"""
    return Report(page, tuple(r["model"] for r in rows), len(rides))
