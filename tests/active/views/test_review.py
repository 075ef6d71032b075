"""The review lists and relabeling."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from active.views import review
from store.errors import CxrAlError

N, C, G, INTER = "Normal", "Consolidation", "GroundGlass", "Interstitial"


def test_review_lists(proj) -> None:
    project, pool = proj
    disagree = review.model_disagreements(project)
    assert disagree["image_id"].tolist() == [pool[1], pool[12], pool[6]]  # surest objection first
    assert disagree["pred"].tolist() == [C, N, G] and disagree["model_round"].eq(5).all()
    # alice's own reading of the two contested images differs from the consensus the model learned
    assert review.model_disagreements(project, "alice")["image_id"].tolist() == [pool[1], pool[4], pool[9], pool[6]]
    assert review.model_disagreements(project, "carol")["image_id"].tolist() == [pool[12]]

    unsure = review.least_confident(project, limit=5)
    assert unsure["image_id"].iloc[0] == pool[20] and pd.isna(unsure["label"].iloc[0])
    assert unsure["confidence"].is_monotonic_increasing and len(unsure) == 5
    assert set(review.least_confident(project, "carol", limit=None)["image_id"]) == set(pool[10:16])
    assert not set(review.least_confident(project, limit=None)["image_id"]) & set(project.db.images("test")["id"])

    gallery = review.class_gallery(project, "groundglass", "carol")
    assert set(gallery["image_id"]) == {pool[10], pool[11], pool[14]} and (gallery["label"] == G).all()
    assert gallery["path"].map(lambda p: Path(p).is_file()).all()

    round_id, matrix = review.latest_confusion_matrix(project)
    assert round_id == 5 and matrix.loc[C, N] == 1 and matrix.to_numpy().sum() == 8
    crosstab = review.labels_vs_predictions(project, "alice")
    assert crosstab.loc[N, C] == 2 and crosstab.loc[C, G] == 1 and crosstab.to_numpy().sum() == 10


def test_relabel_supersedes_the_old_label_with_who_and_when(proj) -> None:
    project, pool = proj
    image_id = pool[1]
    new_id = review.relabel(project, image_id, "consolidation", "alice")
    history = review.label_history_table(project, image_id).set_index("label_id")
    old = history[(history["annotator"] == "alice") & (history.index != new_id)].iloc[0]
    assert old["label"] == N and old["status"] == "superseded"
    assert old["superseded_by"] == "alice" and pd.notna(old["superseded_at"])
    assert history.loc[new_id, "status"] == "current" and history.loc[new_id, "source"] == "review"
    mine = project.db.current_labels()
    assert mine[(mine["image_id"] == image_id) & (mine["annotator"] == "alice")]["label"].tolist() == [C]
    with pytest.raises(CxrAlError, match="already has your label"):
        review.relabel(project, image_id, C, "alice")
    with pytest.raises(CxrAlError, match="only images you labeled"):
        review.relabel(project, pool[12], N, "alice")  # carol's image
    lead_id = review.relabel(project, pool[12], N, "lena", any_image=True)  # leads may relabel any image
    assert review.label_history_table(project, pool[12]).set_index("label_id").loc[lead_id, "annotator"] == "lena"
    with pytest.raises(CxrAlError, match="unknown class"):
        review.relabel(project, image_id, "Pneumothorax", "alice")

