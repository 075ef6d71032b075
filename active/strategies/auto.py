"""`auto`, the default strategy: a random share in every batch, typical images at the cold start, and after
that the strategy the project's own labels show to be worth more than random picks, else random.

The rule (documented in README "How auto chooses"):
1. Every batch keeps a random share (default 20%, `random_share`), drawn uniformly from the pool. Those
   labels are an unbiased sample of the pool: they measure the model (views.efficiency) and the value of
   the other picks (below), and they bound how far any strategy can stray from random sampling.
2. Cold start (no trained model yet): the rest of the batch is TypiClust (Hacohen et al. 2022), the
   typical-and-diverse picks that help most when labels are few.
3. With a model, the rest comes from one arm among CANDIDATES (TypiClust, BADGE), chosen from evidence:
   for each arm the engine measures the value of the labels it picked (engine.evidence.label_gains: how
   much a probe's log-loss on held-out random-share labels rises when k of its labels are left out, per
   label), and the same for random-share labels, on the same held-out splits. Arms not yet tried are tried
   once each (exploration, in CANDIDATES order). Then the arm with the largest mean paired gain over random
   is used; when no arm's gain is above random's, the rest of the batch is random too. The reason shown
   says whether the lead is significant (SIGNIFICANT_SE standard errors; the repeats share labels, so their
   standard error is optimistic: with i.i.d. picks under another name a 2-SE rule still declared a gain in
   1 of 6 seeds) or within the noise. This is "active learning by learning" (Hsu & Lin, AAAI 2015) with
   leave-k-out data valuation on the random share as the reward instead of their importance-weighted
   accuracy. Measured (docs/benchmarks.md): requiring significance before leaving random made auto random
   in most batches and no better than it; following the lead, with the random share kept, was +0.002 AULC
   over random on radiography2 and on phantoms (5 seeds, within the seed spread).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from active.strategies.badge import badge
from active.strategies.base import QueryInputs, Ranked, clip_budget, empty_ranked
from active.strategies.random_sampling import random_sampling
from active.strategies.typiclust import typiclust
from store.errors import CxrAlError

RANDOM_SHARE = 0.2
COLD_START = "typiclust"
# tried in this order. BADGE is the uncertainty arm because it hedges uncertainty with diversity: pure margin
# sampling lost 0.015 AULC to random on radiography2 (docs/benchmarks.md), and exploring it cost auto a batch.
CANDIDATES = {"typiclust": typiclust, "badge": badge}
ARM_NEEDS = {"typiclust": ("embeddings",), "badge": ("probs", "embeddings")}
RANDOM_ARM = "random"
MIN_SE = 0.0  # an arm is used when its measured gain over random exceeds this many standard errors
SIGNIFICANT_SE = 3.0  # ... and called "worth more" only past this many (repeats share labels: their SE is optimistic)
SubStrategy = Callable[[str, QueryInputs, int, int], Ranked]


def random_count(budget: int, share: float, seed: int) -> int:
    """How many of `budget` picks are random: budget x share, rounded up or down at random so that the
    expected count is exact (a batch of 1 is random with probability `share`)."""
    if not 0.0 <= share <= 1.0:
        raise CxrAlError(f"the random share must be between 0 and 1, got {share}")
    exact = budget * share
    low = int(np.floor(exact))
    return low + int(np.random.default_rng([seed, 7]).random() < exact - low)


def choose_arm(inputs: QueryInputs) -> tuple[str, str]:
    """(arm, reason): the strategy for the non-random part of an `auto` batch, by the rule in the module doc."""
    if inputs.probs is None:
        if inputs.embeddings is None:
            return RANDOM_ARM, "cold start without embeddings"
        return COLD_START, "cold start: typical images first"
    ready = [a for a in CANDIDATES if all(getattr(inputs, f) is not None for f in ARM_NEEDS[a])]
    gains = inputs.arm_gains or {}
    if not gains and ready:
        return ready[0], ("no evidence yet (it needs 8 labels from random shares, of two classes at least): "
                          f"{ready[0]} until then")
    for arm in ready:
        if len(gains.get(arm, ())) == 0:
            return arm, "exploring: no evidence on it yet"
    base = np.asarray(gains.get(RANDOM_ARM, ()), dtype=np.float64)
    if len(base) < 2:
        return RANDOM_ARM, "too few random-share labels to judge any strategy yet"
    best, best_margin, best_z = RANDOM_ARM, 0.0, 0.0
    for arm in ready:
        g = np.asarray(gains[arm], dtype=np.float64)
        if len(g) < 2:
            continue
        if len(g) == len(base):  # values from the same held-out splits: compare them pairwise
            d = g - base
            diff, se = d.mean(), d.std(ddof=1) / np.sqrt(len(d))
        else:
            diff = g.mean() - base.mean()
            se = np.sqrt(g.var(ddof=1) / len(g) + base.var(ddof=1) / len(base))
        if diff > MIN_SE * se and diff > best_margin:
            best, best_margin, best_z = arm, diff, diff / se if se > 0 else np.inf
    if best == RANDOM_ARM:
        return RANDOM_ARM, "no strategy has shown a gain over random picks yet"
    if best_z >= SIGNIFICANT_SE:
        return best, (f"its labels are worth more than random ones (+{best_margin:.3g} log-loss per label, "
                      f"{best_z:.1f} standard errors)")
    return best, (f"its labels lead random ones so far (+{best_margin:.3g} log-loss per label), "
                  "within the noise: the random share keeps measuring")


def _run_directly(name: str, inputs: QueryInputs, budget: int, seed: int) -> Ranked:
    return (random_sampling if name == RANDOM_ARM else CANDIDATES[name])(inputs, budget, seed)


def auto(inputs: QueryInputs, budget: int, seed: int = 0, *, run: SubStrategy | None = None) -> Ranked:
    """A batch of `budget` rows: a random share, the rest from the arm `choose_arm` picks; `sources` says
    which of the two chose each row ('random' or the arm's name). `run(name, inputs, budget, seed)` runs
    the parts (select passes one that keeps near-duplicates out of each part)."""
    budget = clip_budget(inputs, budget)
    if budget == 0:
        return empty_ranked()
    run = run or _run_directly
    share = RANDOM_SHARE if inputs.random_share is None else float(inputs.random_share)
    n_random = random_count(budget, share, seed)
    arm, _ = choose_arm(inputs)
    picked = empty_ranked()
    if arm != RANDOM_ARM and budget - n_random > 0:
        picked = run(arm, inputs, budget - n_random, seed)
    taken = inputs.labeled.copy()
    taken[picked.indices] = True
    rest = run(RANDOM_ARM, replace(inputs, labeled=taken), budget - len(picked.indices), seed)
    order = interleaved(len(picked.indices), len(rest.indices))
    sources = np.array([arm] * len(picked.indices) + [RANDOM_ARM] * len(rest.indices), dtype=object)[order]
    return Ranked(np.concatenate([picked.indices, rest.indices]).astype(np.int64)[order],
                  np.concatenate([picked.scores, rest.scores]).astype(np.float64)[order], sources)


def interleaved(n_first: int, n_second: int) -> np.ndarray:
    """An order of n_first + n_second rows (the first group, then the second) that keeps each group's own
    order and spreads the second group evenly through the batch: annotators take a batch from the top and a
    round expires what is left, so random picks placed last would be the first lost."""
    n = n_first + n_second
    if n_second == 0 or n_first == 0:
        return np.arange(n)
    slots = np.floor((np.arange(n_second) + 0.5) * n / n_second).astype(np.int64)  # evenly spaced positions
    is_second = np.zeros(n, dtype=bool)
    is_second[slots] = True
    order = np.empty(n, dtype=np.int64)
    order[is_second] = n_first + np.arange(n_second)
    order[~is_second] = np.arange(n_first)
    return order


auto.composes = True  # select() hands it a `run` that de-duplicates each part
