"""What every query strategy takes and returns: plain arrays in, ranked row indices out.

A strategy is `fn(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked`. It never sees torch,
DuckDB or Streamlit: the caller turns the project's state into arrays over N candidate images
(a mask of the ones that may not be picked, embeddings, class probabilities), and maps the
returned row indices back to image ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from store.errors import CxrAlError


class Ranked(NamedTuple):
    """Rows chosen by a strategy, best first: indices into the N candidates and the strategy's score for each."""

    indices: np.ndarray  # int64, unique, never a labeled row
    scores: np.ndarray  # float64, same length; meaning depends on the strategy (higher = wanted more)
    sources: np.ndarray | None = None  # str per row: which strategy picked it, where a strategy mixes several


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 C-contiguous rows with unit L2 norm (returned as is when they already have it)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) == 0:
        return x
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    if np.allclose(norms, 1.0, atol=1e-3):
        return x
    return x / np.where(norms > 0, norms, 1.0)[:, None].astype(np.float32)


@dataclass(frozen=True)
class QueryInputs:
    """The state a strategy ranks: N candidate rows, which of them are taken, and what is known about them."""

    labeled: np.ndarray  # (N,) bool: True = labeled already or otherwise not selectable
    embeddings: np.ndarray | None = None  # (N, D) float32, L2-normalised (normalised here if they are not)
    probs: np.ndarray | None = None  # (N, C) class probabilities of the latest model; None before one exists
    mc_probs: np.ndarray | None = None  # (T, N, C) MC-dropout samples of the class probabilities
    features: np.ndarray | None = None  # (N, F) penultimate-layer features for BADGE; embeddings when None
    # evidence for `auto`: per candidate strategy, the measured value of the labels it picked (engine.evidence)
    arm_gains: dict[str, np.ndarray] | None = None
    random_share: float | None = None  # share of an `auto` batch drawn at random; None = auto's default

    def __post_init__(self) -> None:
        """Check that the arrays agree on N (CxrAlError otherwise) and bring them to canonical dtypes."""
        labeled = np.asarray(self.labeled)
        if labeled.ndim != 1:
            raise CxrAlError(f"the labeled mask must be 1-D, got shape {labeled.shape}")
        if labeled.dtype != bool:
            raise CxrAlError(f"the labeled mask must be boolean, got {labeled.dtype}")
        object.__setattr__(self, "labeled", labeled)
        n = len(labeled)
        if self.embeddings is not None:
            emb = np.asarray(self.embeddings)
            if emb.ndim != 2 or len(emb) != n:
                raise CxrAlError(f"embeddings must have shape ({n}, D), got {emb.shape}")
            object.__setattr__(self, "embeddings", _unit_rows(emb))
        if self.probs is not None:
            probs = np.asarray(self.probs, dtype=np.float64)
            if probs.ndim != 2 or len(probs) != n or probs.shape[1] < 2:
                raise CxrAlError(f"probs must have shape ({n}, C) with C >= 2 classes, got {probs.shape}")
            object.__setattr__(self, "probs", probs)
        if self.mc_probs is not None:
            mc = np.asarray(self.mc_probs, dtype=np.float64)
            if mc.ndim != 3 or mc.shape[1] != n or mc.shape[2] < 2:
                raise CxrAlError(f"mc_probs must have shape (T, {n}, C) with C >= 2 classes, got {mc.shape}")
            object.__setattr__(self, "mc_probs", mc)
        if self.features is not None:
            feats = np.asarray(self.features, dtype=np.float32)
            if feats.ndim != 2 or len(feats) != n:
                raise CxrAlError(f"features must have shape ({n}, F), got {feats.shape}")
            object.__setattr__(self, "features", np.ascontiguousarray(feats))
        if self.random_share is not None and not 0.0 <= float(self.random_share) <= 1.0:
            raise CxrAlError(f"the random share must be between 0 and 1, got {self.random_share}")

    @property
    def n(self) -> int:
        """Number of candidate rows."""
        return len(self.labeled)

    @property
    def selectable(self) -> np.ndarray:
        """Row indices (int64, ascending) that may be picked."""
        return np.flatnonzero(~self.labeled)


StrategyFn = Callable[..., Ranked]  # fn(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked


def empty_ranked() -> Ranked:
    """A ranking with nothing in it."""
    return Ranked(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))


def top_by_score(scores: np.ndarray, rows: np.ndarray, budget: int) -> Ranked:
    """The `budget` rows with the highest scores (scores[i] belongs to rows[i]), best first, ties by lower row.

    Uses argpartition, so it costs O(len(rows)) plus a sort of only the chosen few.
    """
    budget = min(int(budget), len(rows))
    if budget <= 0:
        return empty_ranked()
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)  # a NaN score ranks last
    if budget < len(rows):
        # the budget-th best score; everything strictly above it is in, ties at it are settled by row
        cut = np.partition(scores, len(scores) - budget)[len(scores) - budget]
        above = np.flatnonzero(scores > cut)
        tied = np.flatnonzero(scores == cut)
        chosen = np.concatenate([above, tied[np.argsort(rows[tied], kind="stable")][:budget - len(above)]])
    else:
        chosen = np.arange(len(rows))
    order = np.lexsort((rows[chosen], -scores[chosen]))
    chosen = chosen[order]
    return Ranked(rows[chosen].astype(np.int64), scores[chosen])


def rank_by_scores(scores: np.ndarray, inputs: QueryInputs, budget: int) -> Ranked:
    """The selectable rows with the highest per-row scores (scores over all N rows), best first."""
    rows = inputs.selectable
    return top_by_score(np.asarray(scores)[rows], rows, clip_budget(inputs, budget))


def clip_budget(inputs: QueryInputs, budget: int) -> int:
    """The budget capped at the number of selectable rows; CxrAlError for a negative budget."""
    budget = int(budget)
    if budget < 0:
        raise CxrAlError(f"the budget must be zero or more, got {budget}")
    return min(budget, int((~inputs.labeled).sum()))


def require_probs(inputs: QueryInputs, strategy: str) -> np.ndarray:
    """The class probabilities, or a CxrAlError saying the strategy needs a trained model."""
    if inputs.probs is None:
        raise CxrAlError(f"strategy {strategy!r} needs class probabilities from a trained model, and there is none "
                         "yet: run a training round first, or use 'typiclust', 'coreset', 'random' or 'auto'")
    return inputs.probs


def require_embeddings(inputs: QueryInputs, strategy: str) -> np.ndarray:
    """The embeddings, or a CxrAlError saying the strategy needs them."""
    if inputs.embeddings is None:
        raise CxrAlError(f"strategy {strategy!r} needs image embeddings and there are none: run `cxr-al embed` "
                         "first, or use 'random' (or an uncertainty strategy once a model is trained)")
    return inputs.embeddings
