"""Uncertainty then diversity: the most uncertain images, thinned to a spread-out batch (Zhdanov 2019's
two-step idea, with k-center greedy as the thinning step)."""

from __future__ import annotations

from active.strategies.base import (
    QueryInputs,
    Ranked,
    clip_budget,
    empty_ranked,
    require_embeddings,
    require_probs,
    top_by_score,
)
from active.strategies.coreset import k_center_greedy
from active.strategies.entropy import entropy_scores
from active.strategies.margin import margin_scores
from store.errors import CxrAlError

UNCERTAINTY_SCORES = {"margin": margin_scores, "entropy": entropy_scores}


def hybrid(inputs: QueryInputs, budget: int, seed: int = 0, *, factor: int = 8,
           uncertainty: str = "margin") -> Ranked:
    """The factor x budget most uncertain rows, thinned to a diverse batch by k-center greedy on the
    embeddings (starting from the labeled set); score = the row's uncertainty."""
    probs = require_probs(inputs, "hybrid")
    embeddings = require_embeddings(inputs, "hybrid")
    if uncertainty not in UNCERTAINTY_SCORES:
        raise CxrAlError(f"unknown uncertainty {uncertainty!r} for 'hybrid'; choose {', '.join(UNCERTAINTY_SCORES)}")
    budget = clip_budget(inputs, budget)
    if budget == 0:
        return empty_ranked()
    rows = inputs.selectable
    uncertain = UNCERTAINTY_SCORES[uncertainty](probs[rows])
    candidates = top_by_score(uncertain, rows, max(1, int(factor)) * budget)
    order, _ = k_center_greedy(embeddings[candidates.indices], embeddings[inputs.labeled], budget, seed=seed,
                               first=0)  # no labels yet: start from the most uncertain candidate
    return Ranked(candidates.indices[order], candidates.scores[order])
