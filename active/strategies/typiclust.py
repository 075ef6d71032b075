"""TypiClust (Hacohen et al. 2022): the most typical image of each of the largest uncovered clusters.

The cold-start choice: it needs no trained model. FAISS k-means (on a sample) gives the clusters, and
density is measured only inside the few clusters it picks from, so no N x N matrix is formed.
"""

from __future__ import annotations

import faiss
import numpy as np
from sklearn.cluster import kmeans_plusplus

from active.strategies.base import (
    QueryInputs,
    Ranked,
    clip_budget,
    empty_ranked,
    require_embeddings,
)
from active.strategies.projection import WORKING_DIM, pca_projection

# TypiClust constants as in the authors' code (Hacohen et al. 2022, github.com/avihu111/TypiClust)
MAX_CLUSTERS = 500
MIN_CLUSTER_SIZE = 5
TYPICALITY_NEIGHBORS = 20
KMEANS_ITERATIONS = 10
KMEANS_POINTS_PER_CENTROID = 40  # k-means trains on a seeded sample of about k x this many rows ...
KMEANS_MIN_SAMPLE = 4096  # ... but never fewer than this (or the whole pool)
SMALL_K = 50  # up to here each cluster is a large share of the batch: seed carefully, restart
SMALL_K_RESTARTS = 3


def typicality(points: np.ndarray, k: int = TYPICALITY_NEIGHBORS) -> np.ndarray:
    """TypiClust typicality: 1 / (mean squared distance to the k nearest other points + 1e-5), with k capped
    at half the points as in the paper; a lone point gets 0."""
    n = len(points)
    if n < 2:
        return np.zeros(n, dtype=np.float64)
    k = max(1, min(k, n // 2))
    dist, _ = faiss.knn(np.ascontiguousarray(points, dtype=np.float32), np.ascontiguousarray(points, np.float32),
                        k + 1)
    mean = np.sort(dist, axis=1)[:, 1:].astype(np.float64).mean(axis=1)  # first column: the point itself
    return 1.0 / (np.maximum(mean, 0.0) + 1e-5)


def kmeans_assignment(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster of each row after FAISS k-means with k centroids, trained on a seeded sample of the rows."""
    rng = np.random.default_rng(seed)
    n_train = min(len(x), max(KMEANS_POINTS_PER_CENTROID * k, KMEANS_MIN_SAMPLE))
    train = x if n_train == len(x) else x[np.sort(rng.choice(len(x), n_train, replace=False))]
    params = {"niter": KMEANS_ITERATIONS, "min_points_per_centroid": 1,
              "max_points_per_centroid": n_train // k + 1}  # already sampled above: no second subsampling
    if k > SMALL_K:
        kmeans = faiss.Kmeans(x.shape[1], k, seed=seed, **params)
        kmeans.train(train)
    else:
        # With few clusters one bad seeding (two true clusters merged, another split) costs a whole pick.
        # FAISS's random and k-means++ seeding do that often (measured: 1 in 3 runs on 16 well-separated
        # clusters), so small k takes sklearn's greedy k-means++ seeding and the best of a few restarts,
        # as the TypiClust authors' code does with sklearn KMeans for up to 50 clusters.
        best_objective, kmeans = np.inf, None
        for restart in range(SMALL_K_RESTARTS):
            start, _ = kmeans_plusplus(train, k, random_state=int(rng.integers(2**31)))
            candidate = faiss.Kmeans(x.shape[1], k, seed=seed + restart, **params)
            objective = candidate.train(train, init_centroids=start)
            if kmeans is None or objective < best_objective:
                best_objective, kmeans = objective, candidate
    _, assignment = kmeans.index.search(x, 1)  # the index holds the final centroids after training
    return assignment[:, 0]


def typiclust(inputs: QueryInputs, budget: int, seed: int = 0, *, dim: int | None = WORKING_DIM,
              max_clusters: int = MAX_CLUSTERS, min_cluster_size: int = MIN_CLUSTER_SIZE,
              neighbors: int = TYPICALITY_NEIGHBORS) -> Ranked:
    """TypiClust (Hacohen et al. 2022), the cold-start default: k-means into n_labeled + budget clusters
    (at most max_clusters), then from the largest clusters holding the fewest labeled images the most
    typical unlabeled image (densest neighbourhood inside its cluster); score = its typicality."""
    embeddings = require_embeddings(inputs, "typiclust")
    budget = clip_budget(inputs, budget)
    if budget == 0:
        return empty_ranked()
    x = pca_projection(embeddings, dim, seed)
    n_labeled = int(inputs.labeled.sum())
    k = max(1, min(n_labeled + budget, max_clusters, len(x)))
    assignment = kmeans_assignment(x, k, seed)
    sizes = np.bincount(assignment, minlength=k)
    labeled_counts = np.bincount(assignment[inputs.labeled], minlength=k)

    rows = inputs.selectable  # unlabeled rows grouped by cluster, without a Python loop over the pool
    by_cluster = rows[np.argsort(assignment[rows], kind="stable")]
    bounds = np.searchsorted(assignment[by_cluster], np.arange(k + 1))
    unlabeled_counts = np.diff(bounds)

    # fewest labeled images first, then the largest clusters; too-small clusters only when nothing else is left
    order = np.lexsort((np.arange(k), -sizes, labeled_counts))
    order = order[unlabeled_counts[order] > 0]
    big = sizes[order] > min_cluster_size
    phases = [order[big], order[~big]]

    ranked: dict[int, list[tuple[int, float]]] = {}  # cluster -> its unlabeled rows, most typical last

    def most_typical_left(cluster: int) -> tuple[int, float] | None:
        if cluster not in ranked:
            members = by_cluster[bounds[cluster]:bounds[cluster + 1]]
            score = typicality(x[members], neighbors)
            best_last = np.lexsort((-members, score))
            ranked[cluster] = [(int(members[j]), float(score[j])) for j in best_last]
        return ranked[cluster].pop() if ranked[cluster] else None

    picks: list[int] = []
    scores: list[float] = []
    for clusters in phases:
        while len(picks) < budget:
            took = False
            for cluster in clusters:
                if len(picks) == budget:
                    break
                pick = most_typical_left(int(cluster))
                if pick is not None:
                    picks.append(pick[0])
                    scores.append(pick[1])
                    took = True
            if not took:
                break
    return Ranked(np.asarray(picks, dtype=np.int64), np.asarray(scores, dtype=np.float64))
