"""Core-set selection (Sener & Savarese 2018): unlabeled images that best cover the embedding space.

Works without a trained model, so it fits a cold start. Never builds an N x N matrix: k-center greedy
keeps one distance per candidate and updates it after each pick.
"""

from __future__ import annotations

import faiss
import numpy as np

from active.strategies.base import (
    QueryInputs,
    Ranked,
    clip_budget,
    empty_ranked,
    require_embeddings,
)
from active.strategies.projection import WORKING_DIM, pca_projection


def k_center_greedy(points: np.ndarray, centers: np.ndarray, budget: int, *, seed: int = 0,
                    first: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center (Sener & Savarese 2018): repeatedly pick the point farthest from every center and
    every earlier pick. Returns (positions into points, distance of each pick to its nearest center or
    earlier pick). Without centers the first pick is `first` (a seeded random point when None), scored
    with its distance to the farthest point. Memory is O(len(points)); no pairwise matrix is formed."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    m = len(points)
    budget = min(int(budget), m)
    if budget <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    sq_norms = np.einsum("ij,ij->i", points, points)
    picks = np.empty(budget, dtype=np.int64)
    scores = np.empty(budget, dtype=np.float64)
    dot = np.empty(m, dtype=np.float32)
    dist = np.empty(m, dtype=np.float32)

    def distances_to(p: int) -> np.ndarray:
        """Squared distances of every point to point p, written into `dist`."""
        np.matmul(points, points[p], out=dot)
        np.multiply(dot, -2.0, out=dist)
        np.add(dist, sq_norms, out=dist)
        np.add(dist, sq_norms[p], out=dist)
        return np.maximum(dist, 0.0, out=dist)

    if len(centers):
        centers = np.ascontiguousarray(centers, dtype=np.float32)
        index = faiss.IndexFlatL2(points.shape[1])
        index.add(centers)
        nearest, _ = index.search(points, 1)  # exact squared distance to the nearest labeled point
        min_dist = np.maximum(nearest[:, 0], 0.0)
        start = 0
    else:
        p = int(first) if first is not None else int(np.random.default_rng(seed).integers(m))
        min_dist = distances_to(p).copy()
        picks[0], scores[0] = p, float(np.sqrt(min_dist.max()))
        min_dist[p] = -1.0
        start = 1
    for i in range(start, budget):
        p = int(np.argmax(min_dist))
        picks[i], scores[i] = p, float(np.sqrt(max(min_dist[p], 0.0)))
        np.minimum(min_dist, distances_to(p), out=min_dist)
        min_dist[picks[: i + 1]] = -1.0  # never again, even when every distance left is zero
    return picks, scores


def coreset(inputs: QueryInputs, budget: int, seed: int = 0, *, dim: int | None = WORKING_DIM) -> Ranked:
    """Core-set selection: the unlabeled rows that best cover the embedding space given the labeled ones
    (k-center greedy on `dim` principal components; score = distance to the nearest labeled or earlier pick)."""
    embeddings = require_embeddings(inputs, "coreset")
    budget = clip_budget(inputs, budget)
    if budget == 0:
        return empty_ranked()
    x = pca_projection(embeddings, dim, seed)
    rows = inputs.selectable
    picks, scores = k_center_greedy(x[rows], x[inputs.labeled], budget, seed=seed)
    return Ranked(rows[picks], scores)
