"""engine.evidence: the value of each strategy's labels, measured on the random share, steers `auto`."""

from __future__ import annotations

import numpy as np
import pytest

from active.engine.evidence import label_gains
from active.strategies import QueryInputs, choose_arm
from active.strategies.auto import CANDIDATES


def _pool(seed: int, n: int = 4000, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian classes (45/45/10%) around random unit centres."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=(0.45, 0.45, 0.10))
    centres = rng.standard_normal((3, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return rng.standard_normal((n, dim)) + 1.5 * centres[y], y


def _gains(seed: int, arm_rows) -> dict[str, np.ndarray]:
    x, y = _pool(seed)
    rng = np.random.default_rng(seed + 9)
    rand = rng.choice(len(x), 60, replace=False)
    rest = np.setdiff1d(np.arange(len(x)), rand)
    arm = arm_rows(rng, rest, y)
    rows = np.concatenate([arm, rand])
    sources = np.array(["badge"] * len(arm) + ["random"] * len(rand), dtype=object)
    return label_gains(x[rows], y[rows], sources, n_classes=3, seed=0, repeats=12)


def _auto_choice(gains: dict[str, np.ndarray]) -> str:
    tried = {arm: np.zeros(len(gains["random"])) for arm in CANDIDATES}
    inputs = QueryInputs(labeled=np.zeros(3, bool), probs=np.full((3, 2), 0.5), embeddings=np.eye(3),
                         arm_gains={**tried, **gains})
    return choose_arm(inputs)[0]


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_redundant_picks_are_worth_less_than_random_ones_and_auto_falls_back(seed: int) -> None:
    """A strategy that keeps picking one common class: its labels add little, the random ones add more."""
    gains = _gains(seed, lambda rng, rest, y: rng.choice(rest[y[rest] == 0], 42, replace=False))
    assert set(gains) == {"badge", "random"} and len(gains["badge"]) == len(gains["random"]) == 12
    assert (gains["badge"] - gains["random"]).mean() < 0
    assert _auto_choice(gains) == "random"


def test_picks_that_are_random_in_all_but_name_are_never_called_worth_more() -> None:
    """The null case: an arm whose picks are drawn like the random share's may lead by chance, but is never
    said to be significantly better."""
    for seed in range(6):
        gains = _gains(seed, lambda rng, rest, y: rng.choice(rest, 40, replace=False))
        tried = {arm: np.zeros(len(gains["random"])) - 1.0 for arm in CANDIDATES}
        inputs = QueryInputs(labeled=np.zeros(3, bool), probs=np.full((3, 2), 0.5), embeddings=np.eye(3),
                             arm_gains={**tried, "badge": gains["badge"], "random": gains["random"]})
        assert "worth more" not in choose_arm(inputs)[1]


def test_a_measured_gain_makes_auto_take_that_arm() -> None:
    random_values = np.array([0.010, 0.012, 0.008, 0.011, 0.009, 0.010])
    assert _auto_choice({"random": random_values, "badge": random_values + 0.02}) == "badge"


def test_no_evidence_without_enough_random_labels() -> None:
    x, y = _pool(2, n=200)
    rows = np.arange(40)
    sources = np.array(["badge"] * 35 + ["random"] * 5, dtype=object)
    assert label_gains(x[rows], y[rows], sources, n_classes=3) == {}
    sources[:] = None
    assert label_gains(x[rows], y[rows], sources, n_classes=3) == {}
