"""ProbCover."""

from __future__ import annotations

import numpy as np
import pytest

from active.strategies import QueryInputs, probcover
from tests.active.strategies.arrays import assert_well_formed, clustered, unit


def test_probcover_covers_every_cluster_before_a_second_pick_in_any() -> None:
    emb, cluster = clustered(6, 30, 16, spread=0.03, seed=21)
    ranked = probcover(QueryInputs(labeled=np.zeros(len(emb), bool), embeddings=emb), 6, seed=0, n_clusters=6)
    assert sorted(cluster[ranked.indices].tolist()) == [0, 1, 2, 3, 4, 5]
    assert (ranked.scores >= 20).all()  # each ball covers (nearly) its whole cluster


def test_probcover_skips_clusters_a_label_already_covers_and_favours_dense_ones() -> None:
    emb, cluster = clustered(4, 30, 16, spread=0.03, seed=22)
    rng = np.random.default_rng(0)
    sparse = unit(rng.standard_normal((5, 16)))  # five isolated images: small balls
    emb = np.concatenate([emb, sparse])
    labeled = np.zeros(len(emb), bool)
    labeled[[0, 30]] = True  # clusters 0 and 1 are covered
    ranked = probcover(QueryInputs(labeled=labeled, embeddings=emb), 3, seed=0, n_clusters=4)
    picked = [int(cluster[i]) if i < 120 else -1 for i in ranked.indices]
    assert sorted(picked[:2]) == [2, 3] and ranked.scores[0] >= ranked.scores[1] > ranked.scores[2]


def test_probcover_radius_is_the_purity_quantile() -> None:
    from active.strategies.probcover import purity_radius

    x = np.array([[0.0], [1.0], [10.0], [11.0]], dtype=np.float32)
    # nearest point of the other cluster: 10, 9, 9, 10 -> the 5% quantile is just above 9
    assert purity_radius(x, np.array([0, 0, 1, 1]), purity=0.95) == pytest.approx(9.0, abs=0.2)
    assert purity_radius(x, np.array([0, 0, 1, 1]), purity=0.5) == pytest.approx(9.5)


def test_probcover_samples_large_pools() -> None:
    emb, cluster = clustered(5, 200, 16, spread=0.03, seed=23)
    inputs = QueryInputs(labeled=np.zeros(len(emb), bool), embeddings=emb)
    ranked = probcover(inputs, 5, seed=1, max_points=300, n_clusters=5)
    assert sorted(cluster[ranked.indices].tolist()) == [0, 1, 2, 3, 4]
    assert_well_formed(ranked, inputs, 5)
    # every labeled image covers, sampled or not: clusters 0-2 are labeled, the picks go to 3 and 4
    labeled = np.isin(np.arange(len(emb)), [0, 1, 200, 201, 400])
    covered = QueryInputs(labeled=labeled, embeddings=emb)
    ranked = probcover(covered, 2, seed=1, max_points=100, n_clusters=5)
    assert sorted(cluster[ranked.indices].tolist()) == [3, 4]
    # a batch larger than the sample is still a full batch
    many = probcover(covered, 150, seed=2, max_points=100, n_clusters=5)
    assert_well_formed(many, covered, 150)
