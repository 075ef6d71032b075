"""Linear probe: multinomial logistic regression on frozen SSL embeddings, the cheap per-round model.

Fits in seconds on a CPU, so a round can refresh predictions after every few labels. The
probe always answers over the project's full class list, also while some classes have no
label yet, and turns into a torch head so Grad-CAM++ can explain probe rounds too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler, normalize

if TYPE_CHECKING:
    from models.probe_head import ProbeHead

# logit margin below every reachable seen-class logit given to classes without labels
UNSEEN_LOGIT_MARGIN = 30.0


def __getattr__(name: str) -> Any:
    """`from models.probe import ProbeHead` keeps working; torch is imported only when the head is asked for."""
    if name == "ProbeHead":
        from models.probe_head import ProbeHead

        return ProbeHead
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class ProbeModel:
    """A fitted probe over n_classes; `lr` is None when only one class had labels."""

    n_classes: int
    feature_dim: int
    seen: np.ndarray  # class indices that had labels, ascending (= lr.classes_)
    lr: LogisticRegression | None
    scaler: StandardScaler | None = None  # per-feature standardisation of the L2-normalised embeddings

    def features(self, x: np.ndarray) -> np.ndarray:
        """What the logistic regression sees: L2-normalised embeddings, standardised per feature."""
        x = normalize(np.asarray(x, dtype=np.float64))
        return x if self.scaler is None else self.scaler.transform(x)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, n_classes) probabilities, rows summing to 1; classes never labelled get 0."""
        return self.proba_of_features(self.features(x), self.lr)

    def proba_of_features(self, features: np.ndarray, lr: LogisticRegression | None) -> np.ndarray:
        """(N, n_classes) float32 probabilities of `lr` (this probe's or a bootstrap member's, fit on the same
        seen classes) on features already passed through self.features."""
        out = np.zeros((features.shape[0], self.n_classes), dtype=np.float64)
        if lr is None:
            out[:, self.seen[0]] = 1.0
        else:
            out[:, self.seen] = lr.predict_proba(features)
        return out.astype(np.float32)

    def logit_parameters(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight (C, D), bias (C,)) whose softmax over L2-normalised features equals predict_proba."""
        if self.lr is None:
            w_seen, b_seen = np.zeros((1, self.feature_dim)), np.zeros(1)
        else:
            w_seen, b_seen = self.lr.coef_, self.lr.intercept_
            if len(self.seen) == 2:  # binary LR: p(second) = sigmoid(w.x + b) = softmax([0, w.x + b])
                w_seen = np.vstack([np.zeros_like(w_seen), w_seen])
                b_seen = np.concatenate([[0.0], b_seen])
            if self.scaler is not None:  # fold (x - mean) / scale into the linear layer
                w_seen = w_seen / self.scaler.scale_
                b_seen = b_seen - w_seen @ self.scaler.mean_
        weight = np.zeros((self.n_classes, self.feature_dim))
        weight[self.seen] = w_seen
        # |w.x| <= ||w|| for unit x, so this bias keeps unseen classes MARGIN below any seen logit
        floor = float(np.min(b_seen - np.linalg.norm(w_seen, axis=1)))
        bias = np.full(self.n_classes, floor - UNSEEN_LOGIT_MARGIN)
        bias[self.seen] = b_seen
        return weight, bias

    def to_torch_head(self) -> ProbeHead:
        """An nn.Module mapping backbone features (B, D) to logits (B, n_classes), e.g. for Grad-CAM++ (imports
        torch, which fitting and predicting never need)."""
        from models.probe_head import ProbeHead

        return ProbeHead(*self.logit_parameters())


PROBE_C = 0.1  # fixed regularisation, and the fall-back of the cross-validated choice
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
CV_FOLDS = 3
CV_MIN_PER_CLASS = 3  # every labelled class needs this many images before C is cross-validated


def cross_validated_c(x: np.ndarray, y: np.ndarray, class_weight: str | dict | None = "balanced",
                      seed: int = 0) -> float:
    """The C of C_GRID with the best stratified CV log-loss on the labelled set (scikit-learn's
    LogisticRegressionCV, warm-started along the grid); PROBE_C while some class has fewer than
    CV_MIN_PER_CLASS labels (folds without a class say nothing about it)."""
    import warnings

    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    if counts[counts > 0].min() < CV_MIN_PER_CLASS:
        return PROBE_C
    folds = StratifiedKFold(n_splits=min(CV_FOLDS, int(counts[counts > 0].min())), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fold's non-converged path point is harmless for choosing C
        cv = LogisticRegressionCV(Cs=list(C_GRID), cv=folds, scoring="neg_log_loss", class_weight=class_weight,
                                  solver="lbfgs", max_iter=2000, refit=False, random_state=seed)
        cv.fit(x, y)
    return float(np.ravel(cv.C_)[0])


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, n_classes: int, C: float | str = PROBE_C,
              class_weight: str | dict | None = "balanced", seed: int = 0) -> ProbeModel:
    """Fit multinomial logistic regression (lbfgs) on L2-normalised embeddings of the labelled images,
    standardised per feature (mean and scale of the labelled images).

    SSL embeddings share one dominant direction (mean pairwise cosine ~0.86 on radiography2), so on raw
    unit vectors a regularised probe sees tiny feature variances. Standardising first, with C=0.1,
    raised the radiography2 test macro-AUC from 0.85 to 0.92 with all labels and from 0.76 to 0.81
    with 24 (docs/benchmarks.md). C="cv" chooses C by cross-validation on the labelled set
    (cross_validated_c); the choice is kept in `ProbeModel.C`."""
    x = normalize(np.asarray(train_x, dtype=np.float64))
    y = np.asarray(train_y, dtype=np.int64).ravel()
    if x.shape[0] != y.size or x.shape[0] == 0:
        raise ValueError(f"need as many labels as embeddings (and at least one): {x.shape[0]} vs {y.size}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be class indices in [0, {n_classes})")
    seen = np.unique(y)
    if seen.size == 1:  # LogisticRegression needs two classes; one label class predicts itself
        return ProbeModel(n_classes, x.shape[1], seen, None)
    # lbfgs with more than two classes is the multinomial (softmax) model in scikit-learn >= 1.5
    scaler = StandardScaler().fit(x)  # a feature constant over the labels gets scale 1, not a division by 0
    if C == "cv":
        C = cross_validated_c(scaler.transform(x), y, class_weight, seed)
    elif isinstance(C, str):
        raise ValueError(f"C must be a number or 'cv', got {C!r}")
    lr = LogisticRegression(C=float(C), class_weight=class_weight, solver="lbfgs", max_iter=5000, random_state=seed)
    lr.fit(scaler.transform(x), y)
    return ProbeModel(n_classes, x.shape[1], seen, lr, scaler)


@dataclass
class ProbeEnsemble:
    """A probe and its bootstrap members (same seen classes, same feature standardisation): samples of the class
    probabilities whose spread is the model uncertainty BALD scores, as MC dropout gives a fine-tuned network."""

    base: ProbeModel
    members: list[LogisticRegression | None] = field(default_factory=list)

    def predict_samples(self, x: np.ndarray) -> np.ndarray:
        """(T, N, n_classes) float32 probabilities, one row block per member, each row summing to 1."""
        features = self.base.features(x)  # once for all members: they share the base's standardisation
        return np.stack([self.base.proba_of_features(features, lr) for lr in self.members])


def fit_probe_ensemble(train_x: np.ndarray, train_y: np.ndarray, n_classes: int, n_members: int = 10, *,
                       base: ProbeModel | None = None, seed: int = 0) -> ProbeEnsemble:
    """A seeded bootstrap ensemble of probes: member t is fit on a class-stratified resample of the labelled set
    (each class resampled to its own count, so no class drops out and the class weights stay those of the base),
    warm-started from the probe on all labels (`base`, fit here when not given) in its feature space.

    Warm starts keep it cheap: each member needs only the lbfgs steps from the full-data optimum to the
    resample's. With a single labelled class every member says that class (no spread to measure)."""
    if n_members < 1:
        raise ValueError(f"an ensemble needs at least one member, got {n_members}")
    y = np.asarray(train_y, dtype=np.int64).ravel()
    base = base if base is not None else fit_probe(train_x, y, n_classes, seed=seed)
    if base.lr is None:
        return ProbeEnsemble(base, [None] * n_members)
    x = base.features(train_x)
    rng = np.random.default_rng(seed)
    rows_of_class = [np.flatnonzero(y == k) for k in base.seen]
    members = []
    for _ in range(n_members):
        resample = np.concatenate([rng.choice(rows, size=rows.size, replace=True) for rows in rows_of_class])
        lr = copy.deepcopy(base.lr).set_params(warm_start=True)
        members.append(lr.fit(x[resample], y[resample]))
    return ProbeEnsemble(base, members)
