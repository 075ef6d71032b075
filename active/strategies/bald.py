"""BALD: images where samples of the model disagree most (Houlsby et al. 2011; Gal et al. 2017).

The samples come from the round that trained the model: MC-dropout passes of a fine-tuned network, or
a seeded bootstrap ensemble of probes in probe rounds; the strategy only sees the (T, N, C) array.
"""

from __future__ import annotations

import numpy as np

from active.strategies.base import QueryInputs, Ranked, rank_by_scores
from active.strategies.entropy import entropy_scores
from store.errors import CxrAlError


def bald_scores(mc_probs: np.ndarray) -> np.ndarray:
    """Mutual information from (T, N, C) samples: the entropy of the mean prediction minus the mean entropy
    of the samples; high where the samples disagree."""
    mc = np.asarray(mc_probs, dtype=np.float64)
    return entropy_scores(mc.mean(axis=0)) - entropy_scores(mc).mean(axis=0)


def bald(inputs: QueryInputs, budget: int, seed: int = 0) -> Ranked:
    """Rows where the model samples disagree most (epistemic uncertainty)."""
    if inputs.mc_probs is None:
        raise CxrAlError("strategy 'bald' needs samples of the class probabilities (MC dropout or a probe "
                         "ensemble), which every training round writes; run a training round first")
    return rank_by_scores(bald_scores(inputs.mc_probs), inputs, budget)
