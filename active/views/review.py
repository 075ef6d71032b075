"""The review page's lists: model-versus-label disagreements, least confident predictions, class galleries, confusion matrix, label history; and relabeling."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from active.engine.labeling import record_label, validate_annotator
from active.engine.rounds import latest_predictions, latest_round
from active.views.accounts import can
from store.errors import CxrAlError
from store.export import labeled_set
from store.project import Project


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

