"""Query strategies on small synthetic arrays: each picks what it promises, and every batch is well formed."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from active.strategies import (
    STRATEGIES,
    QueryInputs,
    Ranked,
    auto,
    badge,
    bald,
    class_balanced,
    coreset,
    entropy,
    hybrid,
    k_center_greedy,
    least_confidence,
    margin,
    near_duplicate_free,
    probcover,
    random_sampling,
    select,
    typiclust,
)
from active.strategies.threads import single_threaded_when_busy
from store.errors import CxrAlError


@pytest.fixture(autouse=True)
def single_faiss_thread():
    """These arrays are tiny: FAISS's OpenMP threads only add start-up cost, which on a busy 2-core machine
    grows a hundredfold (spinning threads wait for a core). Restored afterwards for other tests."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n_clusters: int, per_cluster: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit embeddings, cluster of each row): tight clusters around random, far-apart centres."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_clusters, dim)))
    cluster = np.repeat(np.arange(n_clusters), per_cluster)
    return unit(centres[cluster] + spread * rng.standard_normal((len(cluster), dim))), cluster


def confident(n: int, n_classes: int = 4, seed: int = 0) -> np.ndarray:
    """Probabilities of a confident model: 0.97 on a random class."""
    rng = np.random.default_rng(seed)
    probs = np.full((n, n_classes), 0.03 / (n_classes - 1))
    probs[np.arange(n), rng.integers(n_classes, size=n)] = 0.97
    return probs


def assert_well_formed(ranked: Ranked, inputs: QueryInputs, budget: int) -> None:
    assert isinstance(ranked, Ranked)
    assert ranked.indices.dtype == np.int64 and ranked.scores.dtype == np.float64
    assert len(ranked.indices) == len(ranked.scores) == min(budget, int((~inputs.labeled).sum()))
    assert len(np.unique(ranked.indices)) == len(ranked.indices)
    assert ((ranked.indices >= 0) & (ranked.indices < inputs.n)).all()
    assert not inputs.labeled[ranked.indices].any()


# ----------------------------------------------------------------------------- uncertainty
def test_uncertainty_strategies_pick_the_near_uniform_rows() -> None:
    probs = confident(100)
    unsure = np.array([5, 17, 42, 80])
    probs[unsure] = [[0.26, 0.25, 0.25, 0.24], [0.3, 0.3, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25], [0.28, 0.24, 0.24, 0.24]]
    inputs = QueryInputs(labeled=np.zeros(100, bool), probs=probs)
    for strategy in (least_confidence, margin, entropy):
        ranked = strategy(inputs, 4)
        assert sorted(ranked.indices.tolist()) == unsure.tolist(), strategy.__name__
        assert np.all(np.diff(ranked.scores) <= 0)
    assert entropy(inputs, 1).indices[0] == 42  # the exactly uniform row has the highest entropy
    assert least_confidence(inputs, 1).indices[0] == 42
    assert margin(inputs, 2).indices.tolist() == [17, 42]  # margin 0, ties broken by row


def test_margin_and_entropy_disagree_where_they_should() -> None:
    # a two-way tie (margin 0, lowish entropy) against a spread-out but decided row
    probs = np.array([[0.5, 0.5, 0.0, 0.0], [0.4, 0.2, 0.2, 0.2], [0.97, 0.01, 0.01, 0.01]])
    inputs = QueryInputs(labeled=np.zeros(3, bool), probs=probs)
    assert margin(inputs, 1).indices.tolist() == [0]
    assert entropy(inputs, 1).indices.tolist() == [1]


def test_uncertainty_never_picks_labeled_rows() -> None:
    probs = confident(20)
    probs[:3] = 0.25
    labeled = np.zeros(20, bool)
    labeled[[0, 2]] = True
    ranked = entropy(QueryInputs(labeled=labeled, probs=probs), 2)
    assert ranked.indices[0] == 1 and not labeled[ranked.indices].any()


def test_bald_picks_rows_where_mc_samples_disagree() -> None:
    n, t = 30, 8
    mc = np.tile(confident(n, seed=1), (t, 1, 1))
    mc[:, [3, 4]] = 0.25  # uniform in every sample: high entropy, but the samples agree (no mutual information)
    for row in (10, 20):  # samples flip between two one-hot predictions
        mc[:, row] = 0.0
        mc[::2, row, 0] = 1.0
        mc[1::2, row, 1] = 1.0
    inputs = QueryInputs(labeled=np.zeros(n, bool), probs=mc.mean(axis=0), mc_probs=mc)
    assert sorted(bald(inputs, 2).indices.tolist()) == [10, 20]
    assert set(entropy(inputs, 2).indices.tolist()) == {3, 4}  # what BALD avoids
    assert bald(inputs, 2).scores[0] == pytest.approx(np.log(2))


# ----------------------------------------------------------------------------- diversity
@pytest.mark.parametrize("dim", [16, 96])  # 96 > the working dimension: runs through the PCA projection
def test_coreset_covers_separated_clusters(dim: int) -> None:
    emb, cluster = clustered(6, 30, dim, spread=0.05, seed=2)
    inputs = QueryInputs(labeled=np.zeros(len(emb), bool), embeddings=emb)
    ranked = coreset(inputs, 6, seed=0)
    assert sorted(cluster[ranked.indices].tolist()) == list(range(6))
    assert np.all(np.diff(ranked.scores[1:]) <= 1e-6)


def test_coreset_fills_uncovered_clusters_and_never_picks_labeled_rows() -> None:
    emb, cluster = clustered(5, 20, 8, spread=0.05, seed=3)
    labeled = np.zeros(len(emb), bool)
    labeled[[0, 1, 25]] = True  # clusters 0 and 1 are covered
    inputs = QueryInputs(labeled=labeled, embeddings=emb)
    ranked = coreset(inputs, 3)
    assert sorted(cluster[ranked.indices].tolist()) == [2, 3, 4]
    assert not labeled[ranked.indices].any()


def test_k_center_greedy_matches_brute_force() -> None:
    rng = np.random.default_rng(4)
    points = rng.standard_normal((60, 5)).astype(np.float32)
    centers = rng.standard_normal((3, 5)).astype(np.float32)
    picks, scores = k_center_greedy(points, centers, 5)
    chosen = list(centers)
    for pick, score in zip(picks, scores, strict=True):
        dist = np.min(np.linalg.norm(points[:, None] - np.asarray(chosen)[None], axis=2), axis=1)
        assert pick == np.argmax(dist) and score == pytest.approx(dist.max(), rel=1e-4)
        chosen.append(points[pick])


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


# ----------------------------------------------------------------------------- probcover
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


# ----------------------------------------------------------------------------- hybrid
def test_badge_returns_distinct_diverse_uncertain_rows() -> None:
    n_clusters, n_unsure, n_sure = 4, 40, 5
    emb, cluster = clustered(n_clusters, n_unsure + n_sure, 16, spread=0.05, seed=8)
    probs = np.empty((len(emb), 4))
    unsure = np.zeros(len(emb), bool)
    for c in range(n_clusters):  # in cluster c the model leans to class c; most rows are uncertain
        rows = np.flatnonzero(cluster == c)
        probs[rows[:n_unsure]] = np.roll([0.4, 0.2, 0.2, 0.2], c)
        probs[rows[n_unsure:]] = np.roll([0.997, 0.001, 0.001, 0.001], c)
        unsure[rows[:n_unsure]] = True
    inputs = QueryInputs(labeled=np.zeros(len(emb), bool), embeddings=emb, probs=probs)
    uncertain, covered = [], []
    for seed in range(20):
        ranked = badge(inputs, 4, seed=seed)
        assert_well_formed(ranked, inputs, 4)
        assert unsure[ranked.indices[0]]  # the first centre has the largest gradient
        uncertain.append(unsure[ranked.indices].mean())
        covered.append(len(set(cluster[ranked.indices])))
    assert np.mean(uncertain) >= 0.8
    assert np.mean(covered) >= 3.5  # entropy alone would take all four from one cluster
    assert len(set(cluster[entropy(inputs, 4).indices])) == 1


def test_badge_uses_features_when_given() -> None:
    emb, _ = clustered(2, 10, 4, spread=0.05, seed=9)
    probs = np.full((20, 2), 0.5)
    probs[:, 0] += np.linspace(0, 0.4, 20)
    probs[:, 1] = 1 - probs[:, 0]
    features = np.zeros((20, 3), np.float32)
    features[:, 0] = 1.0
    features[7, 0] = 50.0  # a huge feature norm makes row 7 the largest gradient
    inputs = QueryInputs(labeled=np.zeros(20, bool), embeddings=emb, probs=probs, features=features)
    assert badge(inputs, 1).indices.tolist() == [7]


def test_hybrid_is_both_uncertain_and_diverse() -> None:
    emb, cluster = clustered(4, 30, 16, spread=0.05, seed=10)
    probs = confident(len(emb), seed=2)
    unsure = np.zeros(len(emb), bool)
    for c in range(4):
        rows = np.flatnonzero(cluster == c)[:8]
        unsure[rows] = True
        probs[rows] = [0.3, 0.3, 0.2, 0.2] if c == 0 else [0.36, 0.24, 0.2, 0.2]  # cluster 0 the most uncertain
    inputs = QueryInputs(labeled=np.zeros(len(emb), bool), embeddings=emb, probs=probs)
    ranked = hybrid(inputs, 4, factor=8)
    assert unsure[ranked.indices].all()
    assert sorted(cluster[ranked.indices].tolist()) == [0, 1, 2, 3]
    assert set(cluster[margin(inputs, 4).indices]) == {0}  # uncertainty alone stays in one cluster
    labeled = np.zeros(len(emb), bool)
    labeled[np.flatnonzero(cluster == 1)[20:]] = True  # cluster 1 already has labels
    ranked = hybrid(QueryInputs(labeled=labeled, embeddings=emb, probs=probs), 3, factor=12)
    assert sorted(cluster[ranked.indices].tolist()) == [0, 2, 3]


def test_auto_is_typiclust_without_a_model_and_hybrid_with_one() -> None:
    emb, _ = clustered(4, 20, 8, spread=0.05, seed=11)
    cold = QueryInputs(labeled=np.zeros(80, bool), embeddings=emb)
    np.testing.assert_array_equal(auto(cold, 4, seed=3).indices, typiclust(cold, 4, seed=3).indices)
    warm = QueryInputs(labeled=np.zeros(80, bool), embeddings=emb, probs=confident(80))
    np.testing.assert_array_equal(auto(warm, 4, seed=3).indices, hybrid(warm, 4, seed=3).indices)


def test_class_balanced_favours_rarely_labeled_classes() -> None:
    probs = confident(200, seed=3)
    inputs = QueryInputs(labeled=np.zeros(200, bool), probs=probs)
    predicted = probs.argmax(axis=1)
    balanced = class_balanced(random_sampling, [50, 50, 50, 0], factor=8)(inputs, 8, seed=0)
    assert_well_formed(balanced, inputs, 8)
    assert (predicted[balanced.indices] == 3).sum() >= 6  # class 3 has no labels: it gets most of the batch
    even = class_balanced(random_sampling, [0, 0, 0, 0], factor=8)(inputs, 8, seed=0)
    assert np.bincount(predicted[even.indices], minlength=4).tolist() == [2, 2, 2, 2]
    with pytest.raises(CxrAlError, match="classes"):
        class_balanced(random_sampling, [1, 2, 3])(inputs, 4)


# ----------------------------------------------------------------------------- select and near-duplicates
def test_select_drops_near_duplicates_and_backfills() -> None:
    rng = np.random.default_rng(12)
    emb = unit(rng.standard_normal((50, 16)))
    emb[1:8] = unit(emb[0] + 0.001 * rng.standard_normal((7, 16)))  # rows 0..7: one image, eight files
    emb[8] = unit(emb[40] + 0.001 * rng.standard_normal((1, 16)))[0]  # row 8 duplicates the labeled row 40
    probs = confident(50)
    probs[:10] = np.array([[0.25 + 0.005 * i, 0.25, 0.25, 0.25 - 0.005 * i] for i in range(10)])  # 0 most uncertain
    labeled = np.zeros(50, bool)
    labeled[40] = True
    inputs = QueryInputs(labeled=labeled, embeddings=emb, probs=probs)
    raw = select("entropy", inputs, 3, dedup_threshold=None)
    assert raw.indices.tolist() == [0, 1, 2]
    clean = select("entropy", inputs, 3)
    assert clean.indices.tolist() == [0, 9, int(entropy(inputs, 11).indices[10])]
    assert_well_formed(clean, inputs, 3)
    keep = near_duplicate_free(inputs.embeddings, np.arange(10), np.array([40]), 0.98)
    assert keep.tolist() == [True] + [False] * 8 + [True]


def test_select_fills_with_duplicates_only_when_the_pool_has_too_few_distinct_images() -> None:
    emb = unit(np.tile([[1.0, 0.0, 0.0]], (6, 1)) + 1e-4 * np.arange(18).reshape(6, 3))  # six copies of one image
    emb = np.concatenate([emb, unit(np.array([[0.0, 1.0, 0.0]]))])  # and one other image, ranked last
    probs = np.linspace([0.25, 0.75], [0.45, 0.55], 7)  # entropy ranks the rows 6, 5, ..., 0
    inputs = QueryInputs(labeled=np.zeros(7, bool), embeddings=emb, probs=probs)
    assert select("entropy", inputs, 2).indices.tolist() == [6, 5]  # enough distinct images: no copies
    batch = select("entropy", inputs, 4)  # only two distinct images exist: the best-ranked copies fill up
    assert batch.indices.tolist() == [6, 5, 4, 3]


def test_select_rejects_unknown_names_and_lists_valid_ones() -> None:
    inputs = QueryInputs(labeled=np.zeros(3, bool))
    with pytest.raises(CxrAlError, match="typiclust") as err:
        select("entropyy", inputs, 2)
    assert all(name in str(err.value) for name in STRATEGIES)


def test_missing_inputs_raise_clear_errors() -> None:
    emb, _ = clustered(2, 5, 4, 0.1, seed=0)
    no_model = QueryInputs(labeled=np.zeros(10, bool), embeddings=emb)
    no_embeddings = QueryInputs(labeled=np.zeros(10, bool), probs=confident(10))
    for name in ("least-confidence", "margin", "entropy", "badge", "hybrid"):
        with pytest.raises(CxrAlError, match="trained model"):
            select(name, no_model, 2)
    for name in ("coreset", "typiclust", "probcover", "hybrid", "auto"):
        with pytest.raises(CxrAlError, match="embed"):
            select(name, no_embeddings, 2)
    with pytest.raises(CxrAlError, match="mc_probs"):
        select("bald", no_embeddings, 2)
    with pytest.raises(CxrAlError, match="budget"):
        select("random", no_model, -1)


def test_query_inputs_check_shapes() -> None:
    with pytest.raises(CxrAlError, match="embeddings"):
        QueryInputs(labeled=np.zeros(3, bool), embeddings=np.ones((4, 2)))
    with pytest.raises(CxrAlError, match="probs"):
        QueryInputs(labeled=np.zeros(3, bool), probs=np.ones((3, 1)))
    with pytest.raises(CxrAlError, match="boolean"):
        QueryInputs(labeled=np.zeros(3, int))
    inputs = QueryInputs(labeled=np.zeros(2, bool), embeddings=np.array([[3.0, 4.0], [0.0, 2.0]]))
    np.testing.assert_allclose(np.linalg.norm(inputs.embeddings, axis=1), 1.0, rtol=1e-6)


def test_budget_beyond_the_pool_returns_what_is_there() -> None:
    emb, _ = clustered(3, 4, 6, 0.1, seed=1)
    labeled = np.zeros(12, bool)
    labeled[:9] = True
    inputs = QueryInputs(labeled=labeled, embeddings=emb, probs=confident(12))
    for name in ("random", "entropy", "coreset", "typiclust", "probcover", "badge", "hybrid"):
        assert sorted(select(name, inputs, 50, dedup_threshold=None).indices.tolist()) == [9, 10, 11]
    assert len(select("entropy", QueryInputs(labeled=np.ones(4, bool), probs=confident(4)), 3).indices) == 0


def test_random_is_reproducible_per_seed() -> None:
    inputs = QueryInputs(labeled=np.zeros(1000, bool))
    a, b, c = (random_sampling(inputs, 10, seed=s).indices for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", ["coreset", "typiclust", "probcover", "badge", "hybrid"])
def test_seeded_strategies_are_reproducible(name: str) -> None:
    emb, _ = clustered(5, 30, 96, 0.2, seed=13)
    inputs = QueryInputs(labeled=np.zeros(150, bool), embeddings=emb, probs=np.random.default_rng(0).dirichlet(
        np.ones(4), 150))
    first, again = select(name, inputs, 8, seed=5), select(name, inputs, 8, seed=5)
    np.testing.assert_array_equal(first.indices, again.indices)
    np.testing.assert_allclose(first.scores, again.scores)


def test_numeric_libraries_run_single_threaded_only_while_the_machine_is_busy(monkeypatch) -> None:
    faiss.omp_set_num_threads(2)
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    with single_threaded_when_busy():
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    with single_threaded_when_busy():
        assert faiss.omp_get_max_threads() == 2


# ----------------------------------------------------------------------------- properties
@st.composite
def pools(draw: st.DrawFn) -> tuple[QueryInputs, int]:
    n = draw(st.integers(1, 40))
    dim = draw(st.integers(2, 12))
    n_classes = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim))
    if draw(st.booleans()):  # exact duplicate rows
        emb[rng.integers(n, size=n // 3)] = emb[0]
    labeled = rng.random(n) < draw(st.floats(0, 1))
    mc = rng.dirichlet(np.full(n_classes, draw(st.sampled_from([0.1, 1.0, 10.0]))), size=(3, n))
    inputs = QueryInputs(labeled=labeled, embeddings=emb, probs=mc.mean(axis=0), mc_probs=mc)
    return inputs, draw(st.integers(0, 50))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=pools(), seed=st.integers(0, 1000))
def test_every_strategy_returns_a_well_formed_batch(name: str, pool: tuple[QueryInputs, int], seed: int) -> None:
    inputs, budget = pool
    assert_well_formed(STRATEGIES[name](inputs, budget, seed), inputs, budget)
    assert_well_formed(select(name, inputs, budget, seed=seed, dedup_threshold=None), inputs, budget)
    deduped = select(name, inputs, budget, seed=seed)
    assert_well_formed(deduped, inputs, budget)
    # near-duplicates (of each other or of labeled rows) only when the whole ranking has too few distinct rows
    whole = STRATEGIES[name](inputs, inputs.n, seed)
    if near_duplicate_free(inputs.embeddings, whole.indices, np.flatnonzero(inputs.labeled), 0.98).sum() >= budget:
        assert near_duplicate_free(inputs.embeddings, deduped.indices, np.flatnonzero(inputs.labeled), 0.98).all()


def test_near_duplicates_are_judged_around_the_pool_mean() -> None:
    """Embeddings that share one dominant direction (as SSL and untrained-backbone embeddings do) have raw
    cosines above 0.98 between distinct images; only a true copy may count as a duplicate."""
    rng = np.random.default_rng(3)
    emb = unit(np.array([30.0] + [0.0] * 15) + rng.standard_normal((40, 16)))  # distinct rows, raw cosine ~0.98
    emb[5] = unit(emb[4] + 1e-4 * rng.standard_normal((1, 16)))[0]  # row 5: a copy of row 4
    raw = emb[:10] @ emb[:10].T
    assert (raw[np.triu_indices(10, 1)] > 0.98).mean() > 0.5  # a raw threshold would call them duplicates
    keep = near_duplicate_free(emb, np.arange(10), np.array([20]), 0.98)
    assert keep.tolist() == [True] * 5 + [False] + [True] * 4
    probs = np.full((40, 2), 0.5)
    batch = select("random", QueryInputs(labeled=np.zeros(40, bool), embeddings=emb, probs=probs), 39, seed=1)
    assert not ({4, 5} <= set(batch.indices.tolist()))  # the pool has 39 distinct images: the copy stays out


def test_a_copy_is_a_duplicate_even_in_a_pool_of_two() -> None:
    emb = unit(np.array([[1.0, 0.2, 0.0], [1.0, 0.2, 1e-5]]))
    assert near_duplicate_free(emb, np.array([1]), np.array([0]), 0.98).tolist() == [False]
