"""`auto`: a random share in every batch, TypiClust at the cold start, then the arm the evidence favours."""

from __future__ import annotations

import numpy as np
import pytest

from active.strategies import QueryInputs, auto, choose_arm, select, typiclust
from active.strategies.auto import CANDIDATES, interleaved, random_count
from store.errors import CxrAlError
from tests.active.strategies.arrays import assert_well_formed, clustered, confident


def test_cold_start_is_typiclust_plus_a_random_share() -> None:
    emb, _ = clustered(5, 40, 8, spread=0.05, seed=11)
    cold = QueryInputs(labeled=np.zeros(200, bool), embeddings=emb)
    batch = auto(cold, 10, seed=3)
    assert_well_formed(batch, cold, 10)
    assert list(batch.sources).count("random") == 2 and list(batch.sources).count("typiclust") == 8
    from_arm = batch.indices[batch.sources == "typiclust"]
    np.testing.assert_array_equal(from_arm, typiclust(cold, 8, seed=3).indices)  # in TypiClust's own order
    assert list(np.flatnonzero(batch.sources == "random")) == [2, 7]  # spread through the batch, not last
    assert choose_arm(cold)[0] == "typiclust"
    assert choose_arm(QueryInputs(labeled=np.zeros(3, bool)))[0] == "random"


def test_the_random_share_is_exact_on_average_and_configurable() -> None:
    counts = [random_count(3, 0.2, seed) for seed in range(2000)]
    assert set(counts) == {0, 1} and np.mean(counts) == pytest.approx(0.6, abs=0.03)
    emb, _ = clustered(5, 40, 8, spread=0.05, seed=1)
    all_random = auto(QueryInputs(labeled=np.zeros(200, bool), embeddings=emb, random_share=1.0), 6, seed=0)
    assert set(all_random.sources) == {"random"}
    with pytest.raises(CxrAlError, match="random share"):
        QueryInputs(labeled=np.zeros(3, bool), random_share=1.5)


def _warm(gains: dict[str, list[float]] | None) -> QueryInputs:
    emb, _ = clustered(5, 40, 8, spread=0.05, seed=2)
    return QueryInputs(labeled=np.zeros(200, bool), embeddings=emb, probs=confident(200),
                       arm_gains=None if gains is None else {k: np.asarray(v) for k, v in gains.items()})


def test_untried_arms_are_explored_in_order_then_the_evidence_decides() -> None:
    assert choose_arm(_warm(None))[0] == "typiclust"
    assert choose_arm(_warm({"typiclust": [0.1, 0.2]}))[0] == "badge"
    tried = {arm: [0.010, 0.012, 0.011, 0.009] for arm in CANDIDATES}
    # a set where uncertainty helps: badge's labels are worth clearly more than random ones
    helps = {**tried, "badge": [0.05, 0.06, 0.055, 0.045], "random": [0.010, 0.011, 0.012, 0.009]}
    arm, why = choose_arm(_warm(helps))
    assert arm == "badge" and "worth more" in why and "standard errors" in why
    # a set where it hurts: every arm's labels are worth less than random ones -> random
    hurts = {arm: [0.001, 0.002, 0.0, 0.001] for arm in CANDIDATES} | {"random": [0.02, 0.03, 0.025, 0.02]}
    assert choose_arm(_warm(hurts)) == ("random", "no strategy has shown a gain over random picks yet")
    # a lead inside the noise is followed, and said to be one
    noisy = {**tried, "badge": [0.0, 0.08, -0.02, 0.03], "random": [0.01, 0.02, 0.0, 0.015]}
    arm, why = choose_arm(_warm(noisy))
    assert arm == "badge" and "within the noise" in why
    batch = select("auto", _warm(hurts), 10, seed=4)
    assert set(batch.sources) == {"random"} and len(batch.indices) == 10


def test_auto_through_select_keeps_its_sources_and_its_random_share() -> None:
    inputs = _warm({arm: [0.0, 0.001] for arm in CANDIDATES} | {"random": [0.0, 0.001]})
    inputs = QueryInputs(labeled=inputs.labeled, embeddings=inputs.embeddings, probs=inputs.probs,
                         arm_gains={"typiclust": np.array([0.2, 0.3, 0.25]), "badge": np.array([0.0, 0.01]),
                                    "random": np.array([0.0, 0.01, 0.005])})
    batch = select("auto", inputs, 10, seed=2)
    assert_well_formed(batch, inputs, 10)
    assert sorted(batch.sources) == ["random"] * 2 + ["typiclust"] * 8


@pytest.mark.parametrize(("n_first", "n_second"), [(8, 2), (3, 1), (1, 3), (5, 0), (0, 4), (13, 3)])
def test_interleaved_keeps_each_group_in_order_and_spreads_the_second(n_first: int, n_second: int) -> None:
    order = interleaved(n_first, n_second)
    assert sorted(order) == list(range(n_first + n_second))
    first, second = order[order < n_first], order[order >= n_first]
    assert list(first) == sorted(first) and list(second) == sorted(second)
    if n_first and n_second:
        positions = np.flatnonzero(order >= n_first)
        assert positions[-1] < n_first + n_second - 1 or n_second > n_first  # not all at the end
        assert np.diff(positions).min(initial=n_first + n_second) >= (n_first + n_second) // n_second - 1


def test_without_evidence_auto_says_so() -> None:
    arm, why = choose_arm(_warm({}))
    assert arm == "typiclust" and "no evidence yet" in why
