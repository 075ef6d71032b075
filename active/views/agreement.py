"""Inter-annotator agreement on double-read images (Cohen's kappa per pair, Fleiss' kappa overall) and the images awaiting adjudication."""

from __future__ import annotations

import warnings
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from store.export import labeled_set
from store.project import Project

SYSTEM_SOURCES = ("import",)  # labels no reader gave here (imported with the images)


def given_labels(project: Project) -> pd.DataFrame:
    """Every label a reader gave here and did not withdraw (superseded ones included; imports excluded)."""
    history = project.db.label_history()
    withdrawn = history["superseded_by"] == history["id"]  # undo points a label at itself
    return history[~withdrawn.fillna(False).astype(bool) & ~history["source"].isin(SYSTEM_SOURCES)]


# ----------------------------------------------------------------------------- agreement
def reader_labels(project: Project) -> pd.DataFrame:
    """Each reader's own reading of each image they labeled (their latest label not withdrawn): image_id,
    annotator, label. A later label by someone else does not change what this reader said."""
    given = given_labels(project)
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

