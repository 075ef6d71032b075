"""Clinical classification metrics of a round: accuracy, AUC, sensitivity/specificity, HM, ECE and bootstrap CIs.

Every metric comes from scikit-learn except two it does not have: the harmonic mean of
sensitivity and specificity (a one-line formula on sklearn's recalls) and the expected
calibration error. The bootstrap scores all resamples at once with NumPy (counts and rank sums):
scikit-learn scores one sample per call (1,000 resamples took 8 s), and scipy.stats.bootstrap
cannot resample within classes; a test holds the two to the same numbers on the same resamples.
The result is plain floats, lists and dicts, ready for json.dumps.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import sklearn
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
    roc_auc_score,
)

from store.project import default_positive_class  # one rule for the whole product (re-exported)

ECE_BINS = 15
BOOTSTRAP_CELLS = 4_000_000  # resamples x test images held at once (32 MB of float64 counts)
# The headline metrics: scored with bootstrap CIs, shown by `status`, `train`, the dashboard and `simulate --metric`.
CI_METRICS = ("macro_auc", "balanced_accuracy", "macro_f1", "hm", "accuracy")
METRIC_LABELS = {"macro_auc": "macro-AUC", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1",
                 "hm": "HM (sensitivity, specificity)", "accuracy": "accuracy"}


def harmonic_mean_se_sp(sensitivity: float | None, specificity: float | None) -> float | None:
    """HM = 2·Se·Sp/(Se+Sp): high only when both are high (the COVID-CXR papers' headline number)."""
    if sensitivity is None or specificity is None:
        return None
    if sensitivity + specificity == 0:
        return 0.0
    return 2.0 * sensitivity * specificity / (sensitivity + specificity)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE over equal-width confidence bins (Guo et al. 2017).

    Written here because scikit-learn has no ECE, and its calibration_curve is binary-only
    (it bins one class's probability, not the top-label confidence of a multi-class model).
    """
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    # bins (lo, hi]: confidence 1.0 falls in the last bin, and confidence never reaches 0
    bins = np.clip(np.digitize(conf, np.linspace(0.0, 1.0, n_bins + 1), right=True) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        sel = bins == b
        ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def _class_auc(is_pos: np.ndarray, score: np.ndarray) -> float | None:
    """One-vs-rest ROC AUC of one class, None when it or its complement is absent."""
    if is_pos.all() or not is_pos.any():
        return None
    return float(roc_auc_score(is_pos, score))


def _se_sp(is_pos: np.ndarray, pred_pos: np.ndarray) -> tuple[float | None, float | None]:
    """(sensitivity, specificity) of one class vs the rest: recall of the positives and of the negatives."""
    sp, se = recall_score(is_pos, pred_pos, labels=[False, True], average=None, zero_division=np.nan)
    return (None if np.isnan(se) else float(se)), (None if np.isnan(sp) else float(sp))


def _summary_metrics(y: np.ndarray, probs: np.ndarray, pos: int) -> dict[str, float | None]:
    """The metrics that get confidence intervals, on one (re)sample."""
    pred = probs.argmax(axis=1)
    present = np.unique(y)
    macro_auc = None
    if present.size >= 2:  # one-vs-rest AUC of each present class in one call, then their mean
        onehot = (y[:, None] == present[None, :]).astype(np.int8)
        macro_auc = float(np.mean(roc_auc_score(onehot, probs[:, present], average=None)))
    se, sp = _se_sp(y == pos, pred == pos)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_auc": macro_auc,
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "hm": harmonic_mean_se_sp(se, sp),
    }


def _stratified_resample_counts(y: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """(n_bootstrap, n) times each example is drawn per resample; draws with replacement within each class, so
    every present class stays present with its own support."""
    counts = np.zeros((n_bootstrap, y.size))
    rows = np.arange(n_bootstrap)[:, None]
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        draws = rng.integers(0, idx.size, size=(n_bootstrap, idx.size)) + rows * idx.size  # one bincount per row
        counts[:, idx] = np.bincount(draws.ravel(), minlength=n_bootstrap * idx.size).reshape(n_bootstrap, idx.size)
    return counts


def _weighted_auc(is_pos: np.ndarray, score: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC of each resample (row of counts) at once: the Mann-Whitney statistic with ties
    counted half, which is what roc_auc_score's trapezoids give on the resample with its repeats."""
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of tied scores
    w = counts[:, order]
    neg = np.add.reduceat(w * ~is_pos[order], starts, axis=1)
    pos = np.add.reduceat(w * is_pos[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly under each tie group
    return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def _resampled_summary_metrics(y: np.ndarray, probs: np.ndarray, pos: int,
                               counts: np.ndarray) -> dict[str, np.ndarray | None]:
    """_summary_metrics of every resample at once, from the draw counts (B, n) of stratified resamples.

    Stratified resamples keep each class's support, so per class only the true positives and predicted counts
    vary, and the scores' order is the same in every resample."""
    pred = probs.argmax(axis=1)
    present = np.unique(y)
    support = np.array([(y == k).sum() for k in present], dtype=np.float64)
    is_true = y[:, None] == present[None, :]  # (n, K)
    is_pred = pred[:, None] == present[None, :]
    tp = counts @ (is_true & is_pred)  # (B, K)
    predicted = counts @ is_pred
    recall = tp / support
    out: dict[str, np.ndarray | None] = {
        "accuracy": counts @ (pred == y) / y.size,
        "balanced_accuracy": recall.mean(axis=1),
        "macro_auc": None,
        "macro_f1": (2.0 * tp / (support + predicted)).mean(axis=1),  # 2tp / (2tp + fp + fn)
        "hm": None,
    }
    if present.size >= 2:
        out["macro_auc"] = np.mean([_weighted_auc(y == k, probs[:, k], counts) for k in present], axis=0)
    if pos in present and present.size >= 2:  # sensitivity and specificity both defined
        se = recall[:, np.searchsorted(present, pos)]
        sp = counts @ ((y != pos) & (pred != pos)) / (y != pos).sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            out["hm"] = np.where(se + sp > 0, 2.0 * se * sp / (se + sp), 0.0)
    return out


def bootstrap_ci(y: np.ndarray, probs: np.ndarray, pos: int, n_bootstrap: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, list[float] | None]:
    """Percentile bootstrap CIs (stratified by class, seeded) of the summary metrics; 1,000 resamples of 400
    images in ~0.1 s."""
    rng = np.random.default_rng(seed)
    alpha = (1.0 - level) / 2.0
    chunk = max(1, BOOTSTRAP_CELLS // max(1, y.size))  # resamples per block, bounding memory on large test sets
    parts: dict[str, list[np.ndarray]] = {m: [] for m in CI_METRICS}
    for first in range(0, n_bootstrap, chunk):
        counts = _stratified_resample_counts(y, min(chunk, n_bootstrap - first), rng)
        for name, values in _resampled_summary_metrics(y, probs, pos, counts).items():
            if values is not None:  # e.g. AUC undefined with one class present: no interval, not a zero
                parts[name].append(values)
    return {name: ([float(q) for q in np.quantile(np.concatenate(v), [alpha, 1.0 - alpha])] if v else None)
            for name, v in parts.items()}


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                           positive_class: str | None = None, n_bootstrap: int = 1000,
                           seed: int = 0) -> dict:
    """All metrics a round reports, as a JSON-serialisable dict (None where a metric is undefined)."""
    y = np.asarray(y_true, dtype=np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64)
    classes = [str(c) for c in classes]
    n_classes = len(classes)
    if probs.ndim != 2 or probs.shape != (y.size, n_classes):
        raise ValueError(f"probs must be (N, {n_classes}) for {y.size} labels, got {probs.shape}")
    if y.size == 0:
        raise ValueError("no labelled examples to evaluate")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be class indices in [0, {n_classes})")
    positive_class = positive_class or default_positive_class(classes)
    if positive_class not in classes:
        raise ValueError(f"positive class {positive_class!r} is not one of {classes}")
    pos = classes.index(positive_class)
    pred = probs.argmax(axis=1)
    labels = list(range(n_classes))

    # skip sklearn's argument validation in the hot bootstrap loop; inputs are checked above
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True), warnings.catch_warnings():
        # balanced accuracy warns when y_true lacks a predicted class or holds one class only: expected here
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        summary = _summary_metrics(y, probs, pos)
        sens = recall_score(y, pred, labels=labels, average=None, zero_division=0)
        f1 = f1_score(y, pred, labels=labels, average=None, zero_division=0)
        per_class = {}
        for k, name in enumerate(classes):
            support = int((y == k).sum())
            per_class[name] = {
                "auc": _class_auc(y == k, probs[:, k]),
                "sensitivity": float(sens[k]) if support else None,
                "specificity": _se_sp(y == k, pred == k)[1],
                "f1": float(f1[k]) if support else None,
                "support": support,
            }
        ci = bootstrap_ci(y, probs, pos, n_bootstrap, seed) if n_bootstrap > 0 else {}
    out = {
        **summary,
        "n": int(y.size),
        "classes": classes,
        "positive_class": positive_class,
        "per_class": per_class,
        "ece": expected_calibration_error(y, probs),
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "ci": ci,
    }
    return _json_clean(out)


def _json_clean(obj):
    """NaN/inf -> None and NumPy scalars -> Python, so json.dumps never fails or writes NaN."""
    if isinstance(obj, dict):
        return {k: _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
