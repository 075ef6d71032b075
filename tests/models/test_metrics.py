"""Clinical metrics: agreement with scikit-learn, HM by hand, bootstrap CIs (vectorised = per-resample sklearn),
missing classes, ECE."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from models.metrics import (
    _resampled_summary_metrics,
    _stratified_resample_counts,
    _summary_metrics,
    bootstrap_ci,
    classification_metrics,
    default_positive_class,
    expected_calibration_error,
)

CLASSES3 = ["Normal", "Pneumonia", "COVID-19"]


def _hand_example():
    """12 images, 3 classes; probabilities written out so argmax errors are deliberate."""
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    probs = np.array([
        [0.80, 0.10, 0.10], [0.60, 0.30, 0.10], [0.40, 0.50, 0.10], [0.70, 0.20, 0.10],  # one Normal -> Pneumonia
        [0.20, 0.70, 0.10], [0.10, 0.60, 0.30], [0.30, 0.30, 0.40], [0.50, 0.40, 0.10],  # two Pneumonia wrong
        [0.10, 0.20, 0.70], [0.05, 0.15, 0.80], [0.20, 0.50, 0.30], [0.10, 0.10, 0.80],  # one COVID -> Pneumonia
    ])
    return y, probs


def test_matches_scikit_learn_on_hand_example():
    y, probs = _hand_example()
    pred = probs.argmax(axis=1)
    m = classification_metrics(y, probs, CLASSES3, n_bootstrap=0)
    assert m["n"] == 12
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred)) == pytest.approx(8 / 12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist() == [[3, 1, 0], [1, 2, 1], [0, 1, 3]]
    # per-class sensitivity/specificity read off the confusion matrix by hand
    pneu = m["per_class"]["Pneumonia"]
    assert pneu["sensitivity"] == pytest.approx(2 / 4)
    assert pneu["specificity"] == pytest.approx(6 / 8)  # 8 non-Pneumonia, 2 called Pneumonia
    assert pneu["support"] == 4
    assert pneu["auc"] == pytest.approx(roc_auc_score(y == 1, probs[:, 1]))
    assert pneu["f1"] == pytest.approx(f1_score(y, pred, average=None)[1])
    assert m["positive_class"] == "COVID-19"
    covid = m["per_class"]["COVID-19"]
    assert (covid["sensitivity"], covid["specificity"]) == (pytest.approx(3 / 4), pytest.approx(7 / 8))
    assert m["hm"] == pytest.approx(2 * 0.75 * 0.875 / (0.75 + 0.875))
    json.dumps(m, allow_nan=False)  # plain JSON, no NaN


def test_harmonic_mean_by_hand_on_two_class_confusion():
    # positives: 4 (3 found), negatives: 6 (4 correct) -> Se = 0.75, Sp = 2/3
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p_pos = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.3, 0.4, 0.2, 0.6, 0.7])
    probs = np.stack([1 - p_pos, p_pos], axis=1)
    m = classification_metrics(y, probs, ["Normal", "Pneumonia"], n_bootstrap=0)
    assert m["positive_class"] == "Pneumonia"
    se, sp = 0.75, 4 / 6
    assert m["per_class"]["Pneumonia"]["sensitivity"] == pytest.approx(se)
    assert m["per_class"]["Pneumonia"]["specificity"] == pytest.approx(sp)
    assert m["hm"] == pytest.approx(2 * se * sp / (se + sp)) == pytest.approx(0.70588235)
    # with two classes both one-vs-rest AUCs equal the binary AUC, and so does their mean
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, p_pos))
    assert m["per_class"]["Normal"]["auc"] == pytest.approx(m["per_class"]["Pneumonia"]["auc"])
    # choosing Normal as the class of interest swaps Se and Sp: same HM
    assert classification_metrics(y, probs, ["Normal", "Pneumonia"], positive_class="Normal",
                                  n_bootstrap=0)["hm"] == pytest.approx(m["hm"])


def test_default_positive_class():
    assert default_positive_class(["Normal", "Pneumonia", "COVID-19"]) == "COVID-19"
    assert default_positive_class(["Normal", "Consolidation", "GroundGlass"]) == "Consolidation"
    assert default_positive_class(["Normal"]) == "Normal"
    y, probs = _hand_example()
    with pytest.raises(ValueError, match="positive class"):
        classification_metrics(y, probs, CLASSES3, positive_class="Effusion", n_bootstrap=0)


def _noisy_predictions(n=120, n_classes=3, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def test_bootstrap_ci_brackets_point_and_is_seeded():
    y, probs = _noisy_predictions()
    a = classification_metrics(y, probs, CLASSES3, n_bootstrap=100, seed=5)
    b = classification_metrics(y, probs, CLASSES3, n_bootstrap=100, seed=5)
    c = classification_metrics(y, probs, CLASSES3, n_bootstrap=100, seed=6)
    assert a["ci"] == b["ci"]
    assert a["ci"] != c["ci"]
    for name in ("accuracy", "balanced_accuracy", "macro_auc", "macro_f1", "hm"):
        low, high = a["ci"][name]
        assert low <= a[name] <= high, name
        assert 0.0 < high - low < 0.4, name  # a real interval: neither a point nor everything
    json.dumps(a, allow_nan=False)


@pytest.mark.parametrize("n, n_classes, pos, drop", [(120, 3, 2, None), (60, 3, 2, 2), (80, 4, 1, None),
                                                      (40, 2, 1, None), (30, 3, 0, 0)])
def test_vectorised_resamples_equal_scikit_learn_on_each_resample(n, n_classes, pos, drop):
    """Same resamples, same numbers: each row of draw counts scored by sklearn on the expanded resample."""
    y, probs = _noisy_predictions(n=n, n_classes=n_classes)
    if drop is not None:  # a class absent from the truth (the positive one when drop == pos)
        y = np.where(y == drop, (drop + 1) % n_classes, y)
    probs = np.round(probs, 2)  # tied scores, so the AUC's tie rule is exercised
    counts = _stratified_resample_counts(y, 40, np.random.default_rng(3))
    assert (counts.sum(axis=1) == n).all()
    for k in np.unique(y):  # stratified: every resample keeps each class's support
        assert (counts[:, y == k].sum(axis=1) == (y == k).sum()).all()
    fast = _resampled_summary_metrics(y, probs, pos, counts)
    for b in range(counts.shape[0]):
        idx = np.repeat(np.arange(n), counts[b].astype(int))
        with warnings.catch_warnings():  # sklearn warns on classes predicted but absent: expected here
            warnings.simplefilter("ignore")
            slow = _summary_metrics(y[idx], probs[idx], pos)
        for name, value in slow.items():
            if value is None:
                assert fast[name] is None, name
            else:
                assert fast[name][b] == pytest.approx(value, abs=1e-12), (name, b)


def _slow_bootstrap_ci(y, probs, pos, n_bootstrap, seed, level=0.95):
    """The per-resample scikit-learn loop the vectorised bootstrap replaced (its own random draws)."""
    rng = np.random.default_rng(seed)
    samples = {}
    for _ in range(n_bootstrap):
        idx = np.concatenate([rng.choice(np.flatnonzero(y == k), size=(y == k).sum()) for k in np.unique(y)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = _summary_metrics(y[idx], probs[idx], pos)
        for name, value in summary.items():
            samples.setdefault(name, []).append(value)
    alpha = (1 - level) / 2
    return {name: np.quantile(v, [alpha, 1 - alpha]) for name, v in samples.items()}


def test_vectorised_bootstrap_ci_matches_slow_reference():
    """Different random draws, same distribution: the CI ends agree within Monte Carlo error."""
    y, probs = _noisy_predictions(n=150, n_classes=3)
    fast = bootstrap_ci(y, probs, pos=2, n_bootstrap=4000, seed=0)
    slow = _slow_bootstrap_ci(y, probs, pos=2, n_bootstrap=300, seed=1)
    for name, (low, high) in slow.items():
        assert fast[name] == pytest.approx([low, high], abs=0.03), name
    assert bootstrap_ci(y, probs, 2, n_bootstrap=500, seed=4) == bootstrap_ci(y, probs, 2, n_bootstrap=500, seed=4)


def test_bootstrap_blocks_do_not_change_the_interval_shape(monkeypatch):
    """Large test sets are resampled in blocks (bounded memory); a block size of a few resamples still gives
    one interval per metric over all resamples."""
    import models.metrics as metrics

    y, probs = _noisy_predictions(n=90)
    whole = bootstrap_ci(y, probs, 2, n_bootstrap=2000, seed=0)
    monkeypatch.setattr(metrics, "BOOTSTRAP_CELLS", 90 * 7)  # 7 resamples a block
    blocked = bootstrap_ci(y, probs, 2, n_bootstrap=2000, seed=0)
    for name in whole:
        assert blocked[name] == pytest.approx(whole[name], abs=0.03), name


def test_missing_class_in_ground_truth():
    y, probs = _noisy_predictions(n=60)
    y = np.where(y == 2, 0, y)  # no COVID-19 among the true labels; the model still predicts it
    m = classification_metrics(y, probs, CLASSES3, n_bootstrap=50)
    covid = m["per_class"]["COVID-19"]
    assert covid["support"] == 0
    assert covid["auc"] is None and covid["sensitivity"] is None and covid["f1"] is None
    assert covid["specificity"] == pytest.approx(1 - (probs.argmax(1) == 2).mean())
    present = [roc_auc_score(y == k, probs[:, k]) for k in (0, 1)]
    assert m["macro_auc"] == pytest.approx(np.mean(present))
    assert m["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), labels=[0, 1], average="macro"))
    assert m["hm"] is None and m["ci"]["hm"] is None  # no positives: sensitivity undefined
    assert m["ci"]["macro_auc"] is not None
    assert len(m["confusion_matrix"]) == 3 and m["confusion_matrix"][2] == [0, 0, 0]
    json.dumps(m, allow_nan=False)


def test_single_class_ground_truth_has_no_auc():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    m = classification_metrics(np.zeros(3, int), probs, ["Normal", "COVID-19"], n_bootstrap=20)
    assert m["macro_auc"] is None and m["ci"]["macro_auc"] is None
    assert m["accuracy"] == pytest.approx(2 / 3)


def test_expected_calibration_error_by_hand():
    # 10 predictions at confidence 0.8, 8 correct: perfectly calibrated
    probs = np.tile([0.8, 0.2], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(y, probs) == pytest.approx(0.0)
    # two bins: 5 at 0.9 all correct (gap 0.1), 5 at 0.6 all wrong (gap 0.6) -> 0.5*0.1 + 0.5*0.6
    probs = np.array([[0.9, 0.1]] * 5 + [[0.6, 0.4]] * 5)
    y = np.array([0] * 5 + [1] * 5)
    assert expected_calibration_error(y, probs) == pytest.approx(0.35)
    assert classification_metrics(y, probs, ["Normal", "COVID-19"], n_bootstrap=0)["ece"] == pytest.approx(0.35)


def test_rejects_inconsistent_inputs():
    y, probs = _hand_example()
    with pytest.raises(ValueError, match="probs must be"):
        classification_metrics(y, probs[:, :2], CLASSES3)
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics(np.full(12, 3), probs, CLASSES3)
