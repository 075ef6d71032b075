"""TypiClust."""

from __future__ import annotations

import numpy as np

from active.strategies import QueryInputs, typiclust
from tests.active.strategies.arrays import clustered, unit


def test_typiclust_picks_one_dense_centre_per_cluster() -> None:
    rng = np.random.default_rng(5)
    centres = unit(rng.standard_normal((4, 16)))
    core = np.repeat(np.arange(4), 40)
    outliers = np.repeat(np.arange(4), 8)
    emb = unit(np.concatenate([centres[core] + 0.02 * rng.standard_normal((160, 16)),
                               centres[outliers] + 0.15 * rng.standard_normal((32, 16))]))
    cluster = np.concatenate([core, outliers])
    is_core = np.arange(len(emb)) < 160
    inputs = QueryInputs(labeled=np.zeros(len(emb), bool), embeddings=emb)
    ranked = typiclust(inputs, 4, seed=0)
    assert sorted(cluster[ranked.indices].tolist()) == [0, 1, 2, 3]
    assert is_core[ranked.indices].all()
    for i in ranked.indices:  # the most typical point sits close to its cluster's centre
        members = emb[(cluster == cluster[i]) & is_core]
        assert emb[i] @ members.mean(axis=0) >= np.quantile(members @ members.mean(axis=0), 0.5)


def test_typiclust_goes_to_clusters_without_labels() -> None:
    emb, cluster = clustered(4, 30, 8, spread=0.03, seed=6)
    labeled = np.zeros(len(emb), bool)
    labeled[[0, 30]] = True  # clusters 0 and 1
    ranked = typiclust(QueryInputs(labeled=labeled, embeddings=emb), 2, seed=0)
    assert sorted(cluster[ranked.indices].tolist()) == [2, 3]


def test_typiclust_through_the_pca_projection() -> None:
    emb, cluster = clustered(5, 40, 96, spread=0.05, seed=7)
    ranked = typiclust(QueryInputs(labeled=np.zeros(len(emb), bool), embeddings=emb), 5, seed=1)
    assert sorted(cluster[ranked.indices].tolist()) == [0, 1, 2, 3, 4]
