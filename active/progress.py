"""Progress and review: the numbers behind the dashboard and the review page, as plain DataFrames.

Label efficiency (one point per training round, with its bootstrap CI) and the strategy curves of
the latest simulation; labels per class over time; annotators' counts and throughput;
inter-annotator agreement on double-read images (Cohen's kappa per pair, Fleiss' kappa overall)
and the images awaiting adjudication; the round history; and the review lists (model-versus-label
disagreements, least confident predictions, class galleries, confusion matrix, label history),
with relabeling. Nothing here draws; ui/ does.
"""

from __future__ import annotations

import json
import warnings
from datetime import timedelta
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from active.accounts import can
from active.rounds import (
    BACKGROUND_LOG,
    current_rounds,
    ground_truth,
    latest_predictions,
    latest_round,
    start_round_in_background,
)
from active.service import record_label, validate_annotator
from store.db import utcnow
from store.errors import CxrAlError
from store.export import labeled_set
from store.project import Project

CURVE_METRICS = ("macro_auc", "balanced_accuracy", "macro_f1", "hm", "accuracy")
METRIC_LABELS = {"macro_auc": "macro-AUC", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1",
                 "hm": "HM (sensitivity, specificity)", "accuracy": "accuracy"}
SESSION_GAP = timedelta(minutes=30)  # a longer pause between two labels ends a labeling session
TRAIN_REQUEST_GRACE = timedelta(seconds=90)  # a requested round should have opened by then
SYSTEM_SOURCES = ("import",)  # labels no reader gave here (imported with the images)


def _check_metric(metric: str) -> str:
    if metric not in CURVE_METRICS:
        raise CxrAlError(f"unknown metric {metric!r}; choose one of: {', '.join(CURVE_METRICS)}")
    return metric


def _json(text: Any) -> dict[str, Any]:
    if text is None or (isinstance(text, float) and np.isnan(text)) or text is pd.NA:
        return {}
    return json.loads(text) if text else {}


def _number(value: Any) -> float:
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
        metrics, params = _json(row.metrics), _json(row.params)
        value = _number(metrics.get(metric))
        if np.isnan(value):  # no test split to score: no point on the curve
            continue
        ci = (metrics.get("ci") or {}).get(metric) or [None, None]
        labels = metrics.get("n_train", params.get("n_train", row.n_labels))
        rows.append({"round_id": int(row.id), "finished_at": row.finished_at, "labels": int(labels), "metric": metric,
                     "value": value, "ci_low": _number(ci[0]), "ci_high": _number(ci[1]),
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
        metrics = _json(row.metrics)
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
        stats["full_label"] = _number((metrics.get("full_label") or {}).get(metric))
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


def _given_labels(project: Project) -> pd.DataFrame:
    """Every label a reader gave here and did not withdraw (superseded ones included; imports excluded)."""
    history = project.db.label_history()
    withdrawn = history["superseded_by"] == history["id"]  # undo points a label at itself
    return history[~withdrawn.fillna(False).astype(bool) & ~history["source"].isin(SYSTEM_SOURCES)]


def annotator_stats(project: Project) -> pd.DataFrame:
    """Per annotator: current labels, labels given, and throughput in labels per hour, both of time spent on
    the image (seconds_spent) and of labeling sessions (timestamps; pauses over SESSION_GAP split sessions)."""
    columns = ["annotator", "role", "labels", "labels_given", "first_label", "last_label", "median_seconds",
               "labeling_hours", "labels_per_hour", "session_hours", "labels_per_session_hour"]
    given = _given_labels(project)
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


# ----------------------------------------------------------------------------- agreement
def reader_labels(project: Project) -> pd.DataFrame:
    """Each reader's own reading of each image they labeled (their latest label not withdrawn): image_id,
    annotator, label. A later label by someone else does not change what this reader said."""
    given = _given_labels(project)
    latest = given.sort_values("id").groupby(["image_id", "annotator"], sort=True).tail(1)
    return latest[["image_id", "annotator", "label"]].sort_values(["image_id", "annotator"], ignore_index=True)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of a subjects x categories table of rating counts (NaN when undefined).

    Written here because scikit-learn has Cohen's kappa only (and statsmodels is not a dependency).
    Subjects may have different numbers of raters (at least two): each subject's agreement P_i is
    the share of agreeing rater pairs, sum_j n_ij (n_ij - 1) / (n_i (n_i - 1)); chance agreement P_e
    is sum_j p_j^2 with p_j the share of all ratings in category j; kappa = (mean P_i - P_e) / (1 - P_e).
    With a constant number of raters this is exactly Fleiss (1971).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"counts must be a 2-D subjects x categories table, got shape {counts.shape}")
    raters = counts.sum(axis=1)
    counts, raters = counts[raters >= 2], raters[raters >= 2]
    if len(counts) == 0:
        return float("nan")
    p_subject = (counts * (counts - 1)).sum(axis=1) / (raters * (raters - 1))
    p_category = counts.sum(axis=0) / raters.sum()
    p_chance = float((p_category ** 2).sum())
    if np.isclose(p_chance, 1.0):
        return float("nan")  # every rating in one category: agreement beyond chance is undefined
    return float((p_subject.mean() - p_chance) / (1.0 - p_chance))


def pairwise_kappa(project: Project, readings: pd.DataFrame | None = None) -> pd.DataFrame:
    """Cohen's kappa (scikit-learn) for every pair of readers with shared images, with their raw agreement
    (`readings`: reader_labels(project), when the caller has it)."""
    columns = ["annotator_a", "annotator_b", "shared_images", "agreement", "kappa"]
    readings = reader_labels(project) if readings is None else readings
    if readings.empty:
        return pd.DataFrame(columns=columns)
    wide = readings.pivot(index="image_id", columns="annotator", values="label")
    rows = []
    for a, b in combinations(sorted(wide.columns), 2):
        both = wide[[a, b]].dropna()
        if both.empty:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one shared category only: kappa undefined (NaN), not an alarm
            kappa = cohen_kappa_score(both[a].astype(str), both[b].astype(str), replace_undefined_by=np.nan)
        rows.append({"annotator_a": a, "annotator_b": b, "shared_images": int(len(both)),
                     "agreement": float((both[a] == both[b]).mean()), "kappa": float(kappa)})
    return pd.DataFrame(rows, columns=columns)


def agreement_summary(project: Project) -> dict[str, Any]:
    """Agreement on double-read images: how many, by whom, Fleiss' kappa overall, the share where all readers
    agree, and Cohen's kappa per pair (DataFrame under 'pairs')."""
    readings = reader_labels(project)
    readers_per_image = readings.groupby("image_id")["annotator"].nunique()
    double = readings[readings["image_id"].isin(readers_per_image[readers_per_image >= 2].index)]
    categories = sorted(set(double["label"]) | set(project.classes))
    counts = (double.groupby(["image_id", "label"]).size().unstack(fill_value=0)
              .reindex(columns=categories, fill_value=0)) if len(double) else pd.DataFrame(columns=categories)
    unanimous = (double.groupby("image_id")["label"].nunique() == 1) if len(double) else pd.Series(dtype=bool)
    return {
        "double_read_images": int(double["image_id"].nunique()),
        "readers": sorted(double["annotator"].unique().tolist()),
        "fleiss_kappa": fleiss_kappa(counts.to_numpy()) if len(counts) else float("nan"),
        "percent_agreement": float(unanimous.mean()) if len(unanimous) else float("nan"),
        "pairs": pairwise_kappa(project, readings),
    }


def adjudication_list(project: Project) -> pd.DataFrame:
    """Images whose current labels disagree, with who said what and the label the export would use."""
    frame = labeled_set(project.db, agreement="disagree")
    frame = frame.rename(columns={"label": "consensus"})
    return frame[["image_id", "split", "consensus", "annotator_labels", "n_annotators", "last_labeled_at"]]


# ----------------------------------------------------------------------------- rounds
def _model_description(kind: str, params: dict[str, Any], metrics: dict[str, Any], project: Project) -> str:
    if kind == "train":
        mode = metrics.get("mode") or params.get("mode") or "?"
        backbone = project.config.get("backbone", "")
        epochs = f", {params['epochs']} epochs" if mode == "finetune" and params.get("epochs") else ""
        return f"{mode} ({backbone}{epochs})"
    if kind == "pretrain":
        return f"{params.get('method', '?')} {params.get('backbone', '')}".strip()
    if kind == "embed":
        return f"embeddings ({metrics.get('index') or 'index'})"
    if kind == "simulate":
        strategies = params.get("strategies") or []
        return f"{params.get('mode', 'probe')}: {len(strategies)} strategies x {params.get('seeds', '?')} seeds"
    return kind


def round_history(project: Project) -> pd.DataFrame:
    """Every round, newest first: kind, status, when, how long, labels, model, test metrics and any error."""
    columns = ["round_id", "kind", "status", "started_at", "finished_at", "duration_s", "labels", "model",
               *CURVE_METRICS, "error"]
    rounds = current_rounds(project)
    now = utcnow()
    rows = []
    for row in rounds.sort_values("id", ascending=False).itertuples(index=False):
        metrics, params = _json(row.metrics), _json(row.params)
        end = row.finished_at if pd.notna(row.finished_at) else (now if row.status == "running" else None)
        labels = metrics.get("n_train", params.get("n_train", row.n_labels)) if row.kind == "train" else row.n_labels
        rows.append({
            "round_id": int(row.id), "kind": row.kind, "status": row.status, "started_at": row.started_at,
            "finished_at": row.finished_at, "duration_s": (end - row.started_at).total_seconds() if end is not None
            else float("nan"), "labels": None if pd.isna(labels) else int(labels),
            "model": _model_description(row.kind, params, metrics, project),
            **{m: _number(metrics.get(m)) for m in CURVE_METRICS},
            "error": row.error if isinstance(row.error, str) else None,
        })
    return pd.DataFrame(rows, columns=columns)


def running_rounds(project: Project) -> pd.DataFrame:
    """Rounds still running (round_history rows; duration_s is the time so far)."""
    history = round_history(project)
    return history[history["status"] == "running"].reset_index(drop=True)


def start_training_now(project: Project, actor: str) -> int:
    """Start a training round now, whatever the round policy, in a detached `cxr-al train` process; its pid.

    Refused while a training round runs or one was requested moments ago and has not opened yet, and when
    the labels cannot train a model (fewer than two classes)."""
    opened = current_rounds(project, "train")
    running = opened[opened["status"] == "running"]
    if len(running):
        row = running.iloc[-1]
        raise CxrAlError(f"training round {row['id']} is already running (since {row['started_at']:%H:%M:%S} "
                         "UTC); wait for it to finish")
    requests = project.db.events("train_requested", limit=1)
    if len(requests):
        requested_at = requests["logged_at"].iloc[0]
        opened_since = (opened["started_at"] >= requested_at).any() if len(opened) else False
        if not opened_since and utcnow() - requested_at < TRAIN_REQUEST_GRACE:
            raise CxrAlError("a training round was requested moments ago and is starting; wait for it to appear")
    truth = ground_truth(project)
    pool = truth[truth["split"] == "pool"]
    if pool["label"].nunique() < 2:
        raise CxrAlError(f"a training round needs labels of at least two classes; have {len(pool)} labels of "
                         f"{pool['label'].nunique()} class(es)")
    pid = start_round_in_background(project, if_due=False)
    project.db.log_event("train_requested", actor, pid=pid)
    return int(pid)


def background_log_tail(project: Project, lines: int = 3) -> str:
    """The last lines of the background rounds' log (progress bars included), for a status panel."""
    path = project.artifacts / "rounds" / BACKGROUND_LOG
    if not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 8192))
        text = fh.read().decode("utf-8", errors="replace")
    parts = [p.strip() for p in text.replace("\r", "\n").split("\n") if p.strip()]
    return "\n".join(parts[-lines:])


# ----------------------------------------------------------------------------- review
def can_review_all(role: str | None) -> bool:
    """Leads and admins (who see the dashboard) review everyone's labels; annotators review their own."""
    return can(role, "dashboard")


def _with_predictions(project: Project, frame: pd.DataFrame) -> pd.DataFrame:
    """Add the latest training round's prediction to rows with image_id (and label, when present)."""
    round_id, preds = latest_predictions(project)
    out = frame.merge(preds[["image_id", "probs", "pred", "confidence"]], on="image_id", how="left")
    index = {c: i for i, c in enumerate(project.classes)}

    def prob_of(probs: Any, label: Any) -> float:
        if not isinstance(probs, list | np.ndarray) or label not in index or index[label] >= len(probs):
            return float("nan")
        return float(probs[index[label]])

    def margin(probs: Any) -> float:
        if not isinstance(probs, list | np.ndarray) or len(probs) < 2:
            return float("nan")
        top = np.sort(np.asarray(probs, dtype=float))[-2:]
        return float(top[1] - top[0])

    labels = out["label"] if "label" in out.columns else pd.Series([None] * len(out), index=out.index)
    out["prob_label"] = [prob_of(p, lab) for p, lab in zip(out["probs"], labels, strict=True)]
    out["margin"] = [margin(p) for p in out["probs"]]
    out["model_round"] = round_id
    images = project.db.images()[["id", "path", "split"]].rename(columns={"id": "image_id"})
    return out.drop(columns=[c for c in ("path", "split") if c in out.columns]).merge(images, on="image_id", how="left")


def review_items(project: Project, annotator: str | None = None) -> pd.DataFrame:
    """Labeled images with the latest round's prediction: one annotator's own current labels, or for all
    annotators the consensus label (image_id, label, labeled_by, labeled_at, agreement, pred, confidence,
    prob_label, margin, model_round, path, split)."""
    if annotator is not None:
        current = project.db.current_labels()
        mine = current[current["annotator"] == annotator]
        frame = pd.DataFrame({"image_id": mine["image_id"].astype(int), "label": mine["label"],
                              "labeled_by": mine["annotator"], "labeled_at": mine["created_at"],
                              "agreement": None})
    else:
        consensus = labeled_set(project.db)
        frame = pd.DataFrame({"image_id": consensus["image_id"].astype(int), "label": consensus["label"],
                              "labeled_by": consensus["annotator_labels"], "labeled_at": consensus["last_labeled_at"],
                              "agreement": consensus["agreement"]})
    return _with_predictions(project, frame.reset_index(drop=True))


def model_disagreements(project: Project, annotator: str | None = None) -> pd.DataFrame:
    """Labeled images the latest model predicts otherwise, those it is surest about first (lowest
    probability of the given label)."""
    items = review_items(project, annotator)
    items = items[items["pred"].notna() & (items["pred"] != items["label"])]
    return items.sort_values(["prob_label", "image_id"], ignore_index=True)


def least_confident(project: Project, annotator: str | None = None, limit: int | None = 60) -> pd.DataFrame:
    """The latest model's least confident predictions: on the annotator's own labeled images, or on every
    pool image (labeled or not, with its consensus label when it has one)."""
    if annotator is not None:
        items = review_items(project, annotator)
    else:
        pool = project.db.images("pool")[["id"]].rename(columns={"id": "image_id"})
        consensus = labeled_set(project.db, split="pool")[["image_id", "label", "annotator_labels", "last_labeled_at",
                                                           "agreement"]]
        frame = pool.merge(consensus, on="image_id", how="left").rename(
            columns={"annotator_labels": "labeled_by", "last_labeled_at": "labeled_at"})
        items = _with_predictions(project, frame)
    items = items[items["confidence"].notna()].sort_values(["confidence", "image_id"], ignore_index=True)
    return items if limit is None else items.head(int(limit))


def class_gallery(project: Project, class_name: str, annotator: str | None = None) -> pd.DataFrame:
    """Images labeled as one class (the annotator's own labels, or the consensus), most recently labeled first."""
    label = project.canonical_class(class_name)
    items = review_items(project, annotator)
    items = items[items["label"] == label]
    return items.sort_values(["labeled_at", "image_id"], ascending=[False, True], ignore_index=True)


def latest_confusion_matrix(project: Project) -> tuple[int | None, pd.DataFrame | None]:
    """(round id, test-split confusion matrix of the latest training round: rows true, columns predicted)."""
    last = latest_round(project, "train")
    if last is None or not last["metrics"].get("confusion_matrix"):
        return (None if last is None else int(last["id"])), None
    classes = last["metrics"].get("classes") or project.classes
    matrix = pd.DataFrame(last["metrics"]["confusion_matrix"], index=pd.Index(classes, name="true"),
                          columns=pd.Index(classes, name="predicted"))
    return int(last["id"]), matrix


def labels_vs_predictions(project: Project, annotator: str | None = None) -> pd.DataFrame:
    """Counts of (label, latest prediction) over the reviewed labeled images: rows label, columns predicted."""
    items = review_items(project, annotator)
    items = items[items["pred"].notna()]
    order = project.classes + sorted((set(items["label"]) | set(items["pred"])) - set(project.classes))
    table = pd.crosstab(items["label"], items["pred"]).reindex(index=order, columns=order, fill_value=0)
    table.index.name, table.columns.name = "label", "predicted"
    return table.astype(int)


def label_history_table(project: Project, image_id: int) -> pd.DataFrame:
    """Every label an image was ever given, oldest first: who, when, status (current | superseded |
    withdrawn) and, for a superseded one, by whom and when."""
    history = project.db.label_history(int(image_id))
    who = dict(zip(history["id"], history["annotator"], strict=True))
    withdrawn = (history["superseded_by"] == history["id"]).fillna(False).astype(bool)
    status = np.where(history["superseded_by"].isna(), "current", np.where(withdrawn, "withdrawn", "superseded"))
    superseded_by = [who.get(int(by)) if state == "superseded" else None
                     for by, state in zip(history["superseded_by"], status, strict=True)]
    return pd.DataFrame({"label_id": history["id"].astype(int), "label": history["label"],
                         "annotator": history["annotator"], "created_at": history["created_at"],
                         "source": history["source"], "seconds_spent": history["seconds_spent"], "status": status,
                         "superseded_by": superseded_by, "superseded_at": history["superseded_at"]})


def relabel(project: Project, image_id: int, label: str, annotator: str, *, any_image: bool = False) -> int:
    """Give an image a new label from the review page (source 'review'); returns the new label's id.

    The reviewer's own earlier label of the image is kept, superseded (with who and when). Without
    any_image (annotators) only images the reviewer labeled may be relabeled."""
    annotator = validate_annotator(annotator)
    label = project.canonical_class(label)
    current = project.db.current_labels()
    on_image = current[current["image_id"] == int(image_id)]
    mine = on_image[on_image["annotator"] == annotator]
    if not any_image and mine.empty:
        raise CxrAlError(f"you can relabel only images you labeled; image {image_id} has no label of yours")
    if len(mine) and mine["label"].iloc[-1] == label:
        raise CxrAlError(f"image {image_id} already has your label {label}")
    return record_label(project, int(image_id), label, annotator, source="review")
