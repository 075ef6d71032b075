"""views.efficiency: the prequential estimate matches a hand computation and says plainly what it shows."""

from __future__ import annotations

import numpy as np
import pytest

from active.views.efficiency import HARDER, NO_GAIN, TOO_FEW, efficiency, verdict
from tests.conftest import embedded_phantom_project

CLASSES = ["COVID-19", "Normal"]


@pytest.fixture(scope="module")
def project_after_rounds(tmp_path_factory):
    """Phantoms without a test split; a probe round, then three auto batches labeled with the hidden truth."""
    from active.engine.labeling import record_label
    from active.engine.queue import suggest
    from active.engine.rounds import train

    project = embedded_phantom_project(tmp_path_factory.mktemp("eff"), seed=4, test_fraction=0.0)
    oracle = dict(zip(project.db.oracle_labels()["image_id"], project.db.oracle_labels()["label"], strict=True))
    for seed in range(4):
        if seed == 1:
            train(project, mode="probe", in_child=False, progress=False, n_bootstrap=10)
        for image_id in suggest(project, 12, strategy="auto", annotator="ann", seed=seed)["image_id"]:
            record_label(project, int(image_id), oracle[int(image_id)], "ann")
    return project


def test_prequential_estimate_matches_a_hand_computation(project_after_rounds) -> None:
    project = project_after_rounds
    report = efficiency(project)
    (row,) = report["rounds"]
    assert row["test_macro_auc"] is None  # no test split: the estimate is all there is
    origins = project.db.label_origins()
    picked = origins[origins["model_round"] == row["round_id"]]
    preds = project.db.predictions(row["round_id"])
    probs = dict(zip(preds["image_id"], preds["probs"], strict=True))
    for part, is_random in (("random", True), ("active", False)):
        sub = picked[(picked["strategy"] == "auto:random") == is_random]
        predicted = [project.classes[int(np.argmax(probs[i]))] for i in sub["image_id"]]
        assert row[part]["n"] == len(sub) > 0
        assert row[part]["accuracy"] == pytest.approx(np.mean(np.array(predicted) == sub["label"].to_numpy()))
        lo, hi = row[part]["accuracy_ci"]
        assert lo <= row[part]["accuracy"] <= hi
    assert row["random"]["n"] + row["active"]["n"] == 36 and row["random"]["n"] >= 3
    assert row["sentence"] in (HARDER, NO_GAIN, TOO_FEW)
    assert report["overall"]["random"]["n"] == row["random"]["n"]


def test_status_json_carries_the_estimate(project_after_rounds) -> None:
    import json

    from active.views.status import status

    info = status(project_after_rounds)
    assert set(info["efficiency"]) == {"rounds", "overall", "method"}
    json.dumps(info["efficiency"])  # serialisable as `status --json` prints it


def test_verdict_sentences() -> None:
    wide = {"n": 10, "accuracy": 0.8, "accuracy_ci": [0.6, 0.95]}
    assert verdict(wide, {"n": 10, "accuracy": 0.3, "accuracy_ci": [0.1, 0.5]}) == HARDER
    assert verdict(wide, {"n": 10, "accuracy": 0.7, "accuracy_ci": [0.5, 0.9]}) == NO_GAIN
    assert verdict(wide, {"n": 2, "accuracy": 0.5, "accuracy_ci": [0.0, 1.0]}) == TOO_FEW
    assert verdict({"n": 0, "accuracy": None, "accuracy_ci": None}, wide) == TOO_FEW
