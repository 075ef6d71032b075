"""Leakage between the pool and the held-out test split, and the grouping `status` reports.

Two things make test metrics look better than they are: a patient (or, without patient identifiers, a study)
with images in both splits, so the model is scored on a patient it was trained on; and a test image that is a
near-duplicate of a pool image (the same radiograph saved twice, or re-exported), found after `embed` with the
strategies' notion of a near-duplicate: cosine similarity above a threshold after subtracting the mean
embedding (see active.strategies.selection.near_duplicate_free for why centred, and why 0.98).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from active.engine.artifacts import EMBEDDINGS_NAME
from store.db import TEST_SPLIT_SOURCE
from store.errors import CxrAlError
from store.groups import group_key
from store.project import Project

DEFAULT_DUPLICATE_THRESHOLD = 0.98  # the default of the strategies' near-duplicate filter (selection.select)
MAX_PAIRS = 1000  # near-duplicate pairs listed (the most similar first); all are counted
SEARCH_BLOCK = 4096  # test images searched at a time


def _grouped(project: Project) -> pd.DataFrame:
    """image_groups with each image's group (patient, else study, else the image alone) and its kind."""
    frame = project.db.image_groups()
    frame["group"] = [group_key(k, s, p) for k, s, p in
                      zip(frame["patient_key"], frame["study_uid"], frame["path"], strict=True)]
    frame["kind"] = [g.split(":", 1)[0] for g in frame["group"]]  # (no .str: an empty project has no strings)
    return frame


def _in_both(frame: pd.DataFrame) -> pd.DataFrame:
    """The images of groups that have images in both splits."""
    splits = frame.groupby("group")["split"].nunique()
    return frame[frame["group"].isin(splits.index[splits > 1])]


def grouping(project: Project) -> dict[str, Any]:
    """Counts of the grouping for `status`: patients and studies, images with neither, patients per split, the
    groups in both splits (leakage) and the labels given to test images on request ('test-split')."""
    frame = _grouped(project)
    patients = frame[frame["kind"] == "patient"]
    leaked = _in_both(frame)
    labels = project.db.current_labels()
    return {
        "patients": int(patients["patient_key"].nunique()),
        "studies": int(frame["study_uid"].dropna().nunique()),
        "images_without_group": int((frame["kind"] == "image").sum()),
        "pool_patients": int(patients.loc[patients["split"] == "pool", "patient_key"].nunique()),
        "test_patients": int(patients.loc[patients["split"] == "test", "patient_key"].nunique()),
        "patients_in_both": int(leaked.loc[leaked["kind"] == "patient", "group"].nunique()),
        "studies_in_both": int(leaked.loc[leaked["kind"] == "study", "group"].nunique()),
        "test_split_labels": int((labels["source"] == TEST_SPLIT_SOURCE).sum()),
    }


def groups_in_both(project: Project) -> list[dict[str, Any]]:
    """Every patient (pseudonym) or study with images in both splits: its pool and test image ids."""
    leaked = _in_both(_grouped(project))
    out = []
    for group, rows in leaked.groupby("group", sort=True):
        kind, key = group.split(":", 1)
        out.append({"kind": kind, "key": key,
                    "pool": [int(i) for i in rows.loc[rows["split"] == "pool", "id"]],
                    "test": [int(i) for i in rows.loc[rows["split"] == "test", "id"]]})
    return out


def near_duplicate_pairs(project: Project, threshold: float | None = None,
                         max_pairs: int = MAX_PAIRS) -> dict[str, Any]:
    """Pool/test image pairs whose centred embeddings have a cosine above threshold (None:
    DEFAULT_DUPLICATE_THRESHOLD), most similar first.

    A dict: checked (False before `embed`, with why), threshold, count (all pairs), pairs (the first max_pairs:
    pool_id, test_id, similarity) and not_embedded (images added since the last `embed`, not compared)."""
    import faiss

    from active.strategies.selection import pool_center
    from store.embeddings import load_embeddings

    threshold = DEFAULT_DUPLICATE_THRESHOLD if threshold is None else float(threshold)
    if not 0.0 < threshold < 1.0:
        raise CxrAlError(f"the near-duplicate threshold is a cosine similarity between 0 and 1, got {threshold}")
    result: dict[str, Any] = {"checked": False, "why_not": None, "threshold": float(threshold), "count": 0,
                              "pairs": [], "not_embedded": 0}
    path = project.artifacts / EMBEDDINGS_NAME
    images = project.db.image_groups()[["id", "split"]]
    if not path.exists():
        result["why_not"] = "no embeddings yet: run `cxr-al embed` first"
        result["not_embedded"] = len(images)
        return result
    ids, vectors, _ = load_embeddings(path)
    split = pd.Series(images["split"].to_numpy(), index=images["id"].to_numpy())
    result["not_embedded"] = int((~images["id"].isin(ids)).sum())
    known = np.isin(ids, split.index)
    ids, vectors = ids[known], vectors[known]
    in_test = split.loc[ids].to_numpy() == "test"
    result["checked"] = True
    if not in_test.any() or in_test.all():
        return result
    unit = vectors - pool_center(vectors)
    unit = np.ascontiguousarray(unit, dtype=np.float32)
    faiss.normalize_L2(unit)
    pool_ids, test_ids = ids[~in_test], ids[in_test]
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit[~in_test])
    test_unit = unit[in_test]
    kept = (np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))  # (similarity, pool, test)
    for start in range(0, len(test_unit), SEARCH_BLOCK):
        lims, sims, rows = index.range_search(test_unit[start:start + SEARCH_BLOCK], float(threshold))
        result["count"] += len(sims)
        tests = test_ids[start + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64))]
        merged = [np.concatenate(pair) for pair in zip(kept, (sims, pool_ids[rows], tests), strict=True)]
        best = np.lexsort((merged[2], merged[1], -merged[0]))[:max_pairs]  # most similar first, then by id
        kept = tuple(column[best] for column in merged)
    result["pairs"] = [{"pool_id": int(p), "test_id": int(t), "similarity": round(float(s), 4)}
                       for s, p, t in zip(*kept, strict=True)]
    return result


def leakage(project: Project, threshold: float | None = None, max_pairs: int = MAX_PAIRS) -> dict[str, Any]:
    """What `cxr-al leakage` reports: the grouping, the patients and studies in both splits, the near-duplicate
    pairs across them, and found (whether there is any leakage)."""
    groups = groups_in_both(project)
    duplicates = near_duplicate_pairs(project, threshold, max_pairs)
    return {"grouping": grouping(project), "groups_in_both": groups, "near_duplicates": duplicates,
            "found": bool(groups) or duplicates["count"] > 0}
