"""ProbCover (Yehuda et al., NeurIPS 2022): a low-budget diversity strategy that maximises probability coverage.

Each image covers the images within a radius delta of it in embedding space. Greedily, ProbCover picks the
image whose ball holds the most images not yet covered by a labeled image or an earlier pick. delta is the
largest radius at which at least `purity` of the balls stay inside one k-means cluster (the paper's
alpha = 0.95), so a ball rarely spans two kinds of image.

The ball graph comes from FAISS range search on the top principal components; it holds every pair closer
than delta, so it is built on at most MAX_GRAPH_POINTS rows (a seeded sample of larger pools) and never as a
dense N x N matrix.
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
from active.strategies.typiclust import kmeans_assignment

PURITY = 0.95  # the paper's alpha
DEFAULT_CLUSTERS = 10  # pseudo-classes for delta when no model says how many classes there are
MAX_GRAPH_POINTS = 20_000  # 10k rows: ~1 s on 2 cores; the graph search grows with the square


def purity_radius(x: np.ndarray, assignment: np.ndarray, purity: float = PURITY) -> float:
    """Largest delta with a share >= purity of points whose delta-ball holds only their own cluster.

    The ball around i is pure exactly when delta is at most the distance from i to the nearest point of
    another cluster, so delta is the (1 - purity) quantile of those distances: one nearest-neighbour
    search per cluster, no sweep over candidate radii."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    clusters = np.unique(assignment)
    if len(clusters) < 2:  # one cluster: every ball is pure; cover by the typical spacing instead
        dist, _ = faiss.knn(x, x, min(2, len(x)))
        return float(np.sqrt(max(np.median(dist[:, -1]), 0.0)))
    to_other = np.empty(len(x), dtype=np.float64)
    for c in clusters:
        inside = assignment == c
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x[~inside])
        dist, _ = index.search(x[inside], 1)
        to_other[inside] = np.sqrt(np.maximum(dist[:, 0], 0.0))
    return float(np.quantile(to_other, 1.0 - purity))


def ball_graph(x: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """CSR adjacency (offsets, neighbours) of the delta-ball graph: j is in row i when |x_i - x_j| < delta
    (i itself included)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    lims, _, neighbours = index.range_search(x, float(delta) ** 2)
    lims, neighbours = lims.astype(np.int64), neighbours.astype(np.int64)
    rows = np.repeat(np.arange(len(x)), np.diff(lims))
    missing_self = np.setdiff1d(np.arange(len(x)), rows[rows == neighbours])  # delta ~ 0: keep i in its ball
    if len(missing_self):
        rows = np.concatenate([rows, missing_self])
        neighbours = np.concatenate([neighbours, missing_self])
        order = np.argsort(rows, kind="stable")
        rows, neighbours = rows[order], neighbours[order]
        lims = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(x)))])
    return lims, neighbours


def _transpose(lims: np.ndarray, neighbours: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The reverse graph: for each j, the rows whose ball holds j (distance ties can break symmetry)."""
    rows = np.repeat(np.arange(n), np.diff(lims))
    order = np.argsort(neighbours, kind="stable")
    back_lims = np.concatenate([[0], np.cumsum(np.bincount(neighbours, minlength=n))])
    return back_lims.astype(np.int64), rows[order]


def _gather(lims: np.ndarray, neighbours: np.ndarray, rows: np.ndarray) -> np.ndarray:
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([neighbours[lims[r]:lims[r + 1]] for r in rows])


def probcover(inputs: QueryInputs, budget: int, seed: int = 0, *, delta: float | None = None,
              purity: float = PURITY, n_clusters: int | None = None, dim: int | None = WORKING_DIM,
              max_points: int = MAX_GRAPH_POINTS) -> Ranked:
    """ProbCover: greedy max coverage of delta-balls; score = images newly covered by the pick. When every
    image is covered the rest of the batch is a seeded random draw, as in the authors' code. `n_clusters`
    defaults to the model's class count (DEFAULT_CLUSTERS before a model exists).

    Pools with more than `max_points` unlabeled images build the graph on a seeded sample of them; every
    labeled image still covers the sampled images within delta of it."""
    embeddings = require_embeddings(inputs, "probcover")
    budget = clip_budget(inputs, budget)
    if budget == 0:
        return empty_ranked()
    rng = np.random.default_rng(seed)
    free = inputs.selectable
    taken = np.flatnonzero(inputs.labeled)
    sample = free if len(free) <= max_points else np.sort(rng.choice(free, max_points, replace=False))
    projected = pca_projection(embeddings[np.concatenate([sample, taken])], dim, seed)
    x, x_taken = projected[:len(sample)], projected[len(sample):]
    m = len(sample)
    if delta is None:
        fit = projected if len(projected) <= 2 * max_points else np.concatenate(
            [x, x_taken[rng.choice(len(x_taken), max_points, replace=False)]])
        k = n_clusters or (inputs.probs.shape[1] if inputs.probs is not None else DEFAULT_CLUSTERS)
        k = min(int(k), len(fit) // 2)  # at least two images per cluster
        assignment = kmeans_assignment(fit, k, seed) if k >= 2 else np.zeros(len(fit), dtype=np.int64)
        delta = purity_radius(fit, assignment, purity)
    delta = max(float(delta), 1e-6)
    lims, neighbours = ball_graph(x, delta)
    back_lims, back = _transpose(lims, neighbours, m)

    covered = np.zeros(m, dtype=bool)
    if len(x_taken):  # what the labeled images already cover
        dist, _ = faiss.knn(np.ascontiguousarray(x), np.ascontiguousarray(x_taken), 1)
        covered = dist[:, 0] < delta**2
    edge_rows = np.repeat(np.arange(m), np.diff(lims))
    gain = np.bincount(edge_rows, weights=~covered[neighbours], minlength=m)  # uncovered images in each ball
    picks: list[int] = []
    scores: list[float] = []
    while len(picks) < min(budget, m):
        p = int(np.argmax(gain))  # ties: the lowest row
        if gain[p] <= 0:
            break
        newly = neighbours[lims[p]:lims[p + 1]]
        newly = newly[~covered[newly]]
        covered[newly] = True
        picks.append(p)
        scores.append(float(len(newly)))
        np.subtract.at(gain, _gather(back_lims, back, newly), 1.0)  # those images count for nobody now
        gain[p] = -1.0
    chosen = sample[np.asarray(picks, dtype=np.int64)]
    if len(chosen) < budget:  # everything covered (or a budget beyond the sample): the rest at random
        rest = np.setdiff1d(free, chosen)
        extra = rng.choice(rest, size=budget - len(chosen), replace=False)
        chosen = np.concatenate([chosen, extra])
        scores += [0.0] * len(extra)
    return Ranked(chosen.astype(np.int64), np.asarray(scores, dtype=np.float64))
