"""The numbers behind the progress dashboard: label-efficiency points, simulation curves, labels per class over time, annotator throughput. Nothing here draws; ui/ does."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from active.views.agreement import given_labels
from models.metrics import CI_METRICS as CURVE_METRICS
from models.metrics import METRIC_LABELS  # noqa: F401  (the captions the dashboard shows)
from store.errors import CxrAlError
from store.export import labeled_set
from store.project import Project

SESSION_GAP = timedelta(minutes=30)  # a longer pause between two labels ends a labeling session


def _check_metric(metric: str) -> str:
    if metric not in CURVE_METRICS:
        raise CxrAlError(f"unknown metric {metric!r}; choose one of: {', '.join(CURVE_METRICS)}")
    return metric


def number(value: Any) -> float:
    """A metric value as a float (NaN when missing or not a number)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("nan")


# ----------------------------------------------------------------------------- label efficiency
def efficiency_curve(project: Project, metric: str = "macro_auc") -> pd.DataFrame:
    """One point per finished training round scored on the test split: labels used, the metric and its 95% CI."""
    _check_metric(metric)
    columns = ["round_id", "finished_at", "labels", "metric", "value", "ci_low", "ci_high", "mode"]
    rounds = project.db.rounds("train")
    rows = []
    for row in rounds[rounds["status"] == "done"].itertuples(index=False):
        metrics, params = row.metrics, row.params
        value = number(metrics.get(metric))
        if np.isnan(value):  # no test split to score: no point on the curve
            continue
        ci = (metrics.get("ci") or {}).get(metric) or [None, None]
        labels = metrics.get("n_train", params.get("n_train", row.n_labels))
        rows.append({"round_id": int(row.id), "finished_at": row.finished_at, "labels": int(labels), "metric": metric,
                     "value": value, "ci_low": number(ci[0]), "ci_high": number(ci[1]),
                     "mode": metrics.get("mode", params.get("mode"))})
    return pd.DataFrame(rows, columns=columns)


def simulation_curves(project: Project, metric: str = "macro_auc") -> pd.DataFrame:
    """Per strategy and label count: mean, min and max over seeds of the metric, from the newest simulation
    that ran each strategy (its curves.csv), with the all-labels reference value."""
    _check_metric(metric)
    columns = ["strategy", "labels", "mean", "low", "high", "seeds", "round_id", "full_label"]
    rounds = project.db.rounds("simulate")
    frames, seen = [], set()
    for row in rounds[rounds["status"] == "done"].sort_values("id", ascending=False).itertuples(index=False):
        metrics = row.metrics
        path = metrics.get("curves")
        if not path or not Path(path).is_file():
            continue  # the simulation's output folder was moved or removed
        curves = pd.read_csv(path)
        if metric not in curves.columns or "strategy" not in curves.columns:
            continue
        curves = curves[~curves["strategy"].isin(seen)]
        if curves.empty:
            continue
        seen.update(curves["strategy"].unique())
        stats = (curves.groupby(["strategy", "labels"], sort=False)[metric]
                 .agg(mean="mean", low="min", high="max", seeds="count").reset_index())
        stats["round_id"] = int(row.id)
        stats["full_label"] = number((metrics.get("full_label") or {}).get(metric))
        frames.append(stats)
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns].sort_values(["strategy", "labels"], ignore_index=True)


# ----------------------------------------------------------------------------- labels and annotators
def labels_per_class_over_time(project: Project, freq: str | None = None) -> pd.DataFrame:
    """Cumulative labeled images per (consensus) class at each time step (hourly within two days, else daily)."""
    columns = ["time", "label", "labels"]
    frame = labeled_set(project.db)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    times = pd.to_datetime(frame["first_labeled_at"])
    freq = freq or ("h" if times.max() - times.min() <= pd.Timedelta(days=2) else "D")
    frame = frame.assign(time=times.dt.floor(freq))
    order = project.classes + sorted(set(frame["label"]) - set(project.classes))
    counts = frame.groupby(["time", "label"]).size().unstack(fill_value=0).reindex(columns=order, fill_value=0)
    counts = counts.cumsum()
    counts.columns.name = "label"
    return counts.stack().rename("labels").reset_index()[columns]


def annotator_stats(project: Project) -> pd.DataFrame:
    """Per annotator: current labels, labels given, and throughput in labels per hour, both of time spent on
    the image (seconds_spent) and of labeling sessions (timestamps; pauses over SESSION_GAP split sessions)."""
    columns = ["annotator", "role", "labels", "labels_given", "first_label", "last_label", "median_seconds",
               "labeling_hours", "labels_per_hour", "session_hours", "labels_per_session_hour"]
    given = given_labels(project)
    if given.empty:
        return pd.DataFrame(columns=columns)
    roles = project.db.annotators().set_index("name")["role"]
    rows = []
    for annotator, group in given.sort_values("created_at").groupby("annotator", sort=True):
        timed = group["seconds_spent"].dropna()
        labeling_s = float(timed.sum())
        gaps = group["created_at"].diff().dt.total_seconds()
        starts = gaps.isna() | (gaps > SESSION_GAP.total_seconds())
        # a session lasts from its first label's start (its seconds_spent, when known) to its last label
        session_s = float(gaps[~starts].sum() + group.loc[starts, "seconds_spent"].fillna(0).sum())
        rows.append({
            "annotator": annotator, "role": roles.get(annotator, "annotator"),
            "labels": int(group["superseded_by"].isna().sum()), "labels_given": int(len(group)),
            "first_label": group["created_at"].min(), "last_label": group["created_at"].max(),
            "median_seconds": float(timed.median()) if len(timed) else float("nan"),
            "labeling_hours": labeling_s / 3600,
            "labels_per_hour": len(timed) / (labeling_s / 3600) if labeling_s > 0 else float("nan"),
            "session_hours": session_s / 3600,
            "labels_per_session_hour": len(group) / (session_s / 3600) if session_s > 0 else float("nan"),
        })
    return pd.DataFrame(rows, columns=columns)

