"""Core-set selection and k-center greedy."""

from __future__ import annotations

import numpy as np
import pytest

from active.strategies import QueryInputs, coreset, k_center_greedy
from tests.active.strategies.arrays import clustered


@pytest.mark.parametrize("dim", [16, 96])  # 96 > the working dimension: runs through the PCA projection
def test_coreset_covers_separated_clusters(dim: int) -> None:
    emb, cluster = clustered(6, 30, dim, spread=0.05, seed=2)
    inputs = QueryInputs(labeled=np.zeros(len(emb), bool), embeddings=emb)
    ranked = coreset(inputs, 6, seed=0)
    assert sorted(cluster[ranked.indices].tolist()) == list(range(6))
    assert np.all(np.diff(ranked.scores[1:]) <= 1e-6)


def test_coreset_fills_uncovered_clusters_and_never_picks_labeled_rows() -> None:
    emb, cluster = clustered(5, 20, 8, spread=0.05, seed=3)
    labeled = np.zeros(len(emb), bool)
    labeled[[0, 1, 25]] = True  # clusters 0 and 1 are covered
    inputs = QueryInputs(labeled=labeled, embeddings=emb)
    ranked = coreset(inputs, 3)
    assert sorted(cluster[ranked.indices].tolist()) == [2, 3, 4]
    assert not labeled[ranked.indices].any()


def test_k_center_greedy_matches_brute_force() -> None:
    rng = np.random.default_rng(4)
    points = rng.standard_normal((60, 5)).astype(np.float32)
    centers = rng.standard_normal((3, 5)).astype(np.float32)
    picks, scores = k_center_greedy(points, centers, 5)
    chosen = list(centers)
    for pick, score in zip(picks, scores, strict=True):
        dist = np.min(np.linalg.norm(points[:, None] - np.asarray(chosen)[None], axis=2), axis=1)
        assert pick == np.argmax(dist) and score == pytest.approx(dist.max(), rel=1e-4)
        chosen.append(points[pick])
