"""Oracle simulation: files and fields on a phantom project, reproducibility, and label savings on known data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from active.engine.simulate import (
    SimulationData,
    project_for_simulation,
    run_strategy,
    simulate,
    summarise,
)
from store.errors import CxrAlError


@pytest.fixture(scope="module")
def sim_project(tmp_path_factory):
    """A phantom ImageFolder turned into a simulation project (ground truth hidden, embedded once)."""
    from store.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("sim")
    data = write_phantom_dataset(root / "data", n=48, seed=9, size=48)
    return project_for_simulation(data / "images", root / "out", init="random", image_size=48, in_child=False)


def test_simulation_writes_curves_summary_plot_and_records_itself(sim_project, tmp_path) -> None:
    out = tmp_path / "run"
    result = simulate(sim_project, out, strategies=["random", "entropy", "typiclust"], seeds=2, initial=4, step=4,
                      budget=16)
    curves = pd.read_csv(out / "curves.csv")
    assert {"strategy", "seed", "labels", "macro_auc", "accuracy", "balanced_accuracy", "macro_f1", "hm"} <= set(
        curves.columns)
    assert sorted(curves["labels"].unique()) == [4, 8, 12, 16]
    assert len(curves) == 3 * 2 * 4
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["strategy"]) == {"random", "entropy", "typiclust"}
    assert {"labels_to_90pct", "labels_to_95pct", "labels_to_98pct", "aulc", "ratio_vs_random_95pct"} <= set(
        summary.columns)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert result["pool"] + result["test"] == 48
    recorded = sim_project.db.rounds("simulate")
    assert len(recorded) >= 1 and recorded.iloc[-1]["status"] == "done"

    again = simulate(sim_project, tmp_path / "again", strategies=["random", "entropy", "typiclust"], seeds=2,
                     initial=4, step=4, budget=16, record=False)
    cols = ["strategy", "seed", "labels", "macro_auc"]
    pd.testing.assert_frame_equal(curves[cols], pd.read_csv(tmp_path / "again" / "curves.csv")[cols])
    assert again["full_label"] == result["full_label"]


def test_test_split_is_never_selected(sim_project) -> None:
    from active.engine.simulate import load_simulation_data

    data = load_simulation_data(sim_project)
    test_ids = set(sim_project.db.images("test")["id"])
    assert not set(data.pool_ids) & test_ids and len(data.test_y) == len(test_ids)


def test_bad_arguments(sim_project, tmp_path) -> None:
    with pytest.raises(CxrAlError, match="unknown strategies"):
        simulate(sim_project, tmp_path, strategies=["magic"])
    with pytest.raises(CxrAlError, match="budget"):
        simulate(sim_project, tmp_path, strategies=["random"], initial=10, budget=5)


def test_uncertainty_and_hybrid_save_labels_over_random() -> None:
    """On data with a known linear 4-class structure and a narrow boundary, entropy and hybrid sampling
    reach 95% of the all-label macro-AUC with fewer labels than random (mean over 3 seeds)."""
    rng = np.random.default_rng(0)
    dim, n_pool, n_test = 16, 1000, 400
    weights = rng.normal(size=(dim, 4))

    def sample(n):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        y = np.argmax(x @ weights + 0.3 * rng.normal(size=(n, 4)), axis=1)
        return x / np.linalg.norm(x, axis=1, keepdims=True), y

    pool_x, pool_y = sample(n_pool)
    test_x, test_y = sample(n_test)
    data = SimulationData(["A", "B", "C", "D"], "B", pool_x, pool_y, test_x, test_y, np.arange(n_pool))
    from active.engine.simulate import _score, probe_outputs

    full = _score(data, probe_outputs(data, np.ones(n_pool, dtype=bool), 0).test_probs)
    points = [p for seed in range(3) for s in ("random", "entropy", "hybrid")
              for p in run_strategy(data, s, seed, initial=10, step=10, budget=120)]
    summary = summarise(pd.DataFrame(points), full).set_index("strategy")
    need = summary["labels_to_95pct"].fillna(10_000)
    assert need["entropy"] < need["random"] and need["hybrid"] < need["random"], summary
    assert summary.loc["entropy", "aulc"] > summary.loc["random", "aulc"]


def test_phantom_simulation_finds_a_rare_finding_and_hybrid_saves_labels(tmp_path) -> None:
    """The whole path on images: a screening pool of phantoms where one image in five shows ground-glass
    opacities (the rest are normal), ingested with hidden ground truth and embedded once, then simulated.

    Uncertainty sampling pays off through the rare finding: at 120 labels entropy and hybrid have about twice
    as many positives labeled as random, and both reach 90% of the all-label macro-AUC with fewer labels.
    Checked on four generated datasets (seeds 5-8, docs/benchmarks.md): positives found 2.0-2.5x random on
    all four; fewer labels than random to 90% for hybrid on three (on the fourth no strategy got there in
    120 labels) and for entropy on three (on one it never got there). This dataset (seed 5) is one where
    both save labels; the positives-found margin is what holds everywhere."""
    from store.phantoms import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", n=1600, seed=5, size=32, lesion_strength=(1.5, 3.0),
                                 classes=("Normal", "GroundGlass"))
    rare = sorted((data / "images" / "GroundGlass").iterdir())
    for path in rare[len(rare) // 4:]:  # 200 of 1000 images show the finding
        path.unlink()
    project = project_for_simulation(data / "images", tmp_path / "out", init="random", image_size=32,
                                     in_child=False)
    result = simulate(project, tmp_path / "sim", strategies=["random", "entropy", "hybrid"], seeds=3, initial=8,
                      step=8, budget=120)
    curves = pd.read_csv(tmp_path / "sim" / "curves.csv")
    assert (curves["labeled_Normal"] + curves["labeled_GroundGlass"] == curves["labels"]).all()
    final = curves[curves["labels"] == 120].groupby("strategy")["labeled_GroundGlass"].mean()
    assert final["random"] < 0.3 * 120  # random finds about the prevalence (20%)
    assert final["entropy"] >= 1.5 * final["random"] and final["hybrid"] >= 1.5 * final["random"], final
    summary = pd.DataFrame(result["summary"]).set_index("strategy")
    need = summary["labels_to_90pct"].fillna(10_000)
    assert need["entropy"] < need["random"] and need["hybrid"] < need["random"], summary


def test_finetune_mode_fine_tunes_per_point_and_feeds_bald_and_badge(tmp_path) -> None:
    """Two rounds of fine-tuning simulation on tiny phantoms (32 px, 1 epoch): curves for a probability-sample
    strategy (BALD), a feature one (BADGE) and random, the recipe recorded, no checkpoints left behind."""
    from active.engine.simulate import FinetuneRecipe, finetune_recipe
    from store.phantoms import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", n=20, seed=4, size=32)
    project = project_for_simulation(data / "images", tmp_path / "out", init="random", image_size=32,
                                     in_child=False)
    recipe = finetune_recipe(project, epochs=1, batch_size=8, device="cpu")
    assert recipe == FinetuneRecipe(checkpoint=None, image_size=32, epochs=1, batch_size=8, device="cpu")
    points = []
    result = simulate(project, tmp_path / "sim", strategies=["random", "bald", "badge"], seeds=1, initial=6, step=4,
                      budget=10, mode="finetune", recipe=recipe, progress=points.append)
    curves = pd.read_csv(tmp_path / "sim" / "curves.csv")
    assert sorted(curves["labels"].unique()) == [6, 10] and len(curves) == 3 * 2 == len(points)
    assert curves["macro_auc"].between(0, 1).all() and np.isfinite(result["full_label"]["accuracy"])
    assert not list((tmp_path / "sim").glob("finetune-*"))  # the per-point checkpoints are gone
    recorded = project.db.rounds("simulate").iloc[-1]
    assert recorded["params"]["mode"] == "finetune" and recorded["params"]["recipe"]["epochs"] == 1
    with pytest.raises(CxrAlError, match="unknown simulation mode"):
        simulate(project, tmp_path / "x", strategies=["random"], mode="distil")


def test_probe_mode_simulates_bald_and_auto(tmp_path) -> None:
    """Probe points carry their bootstrap ensemble's samples, so BALD runs in probe simulations too; auto's
    batches name their parts."""
    from active.engine.simulate import SimulationData, run_strategy

    rng = np.random.default_rng(0)
    y = rng.integers(3, size=300)
    x = rng.standard_normal((300, 16)) + 2.0 * np.eye(3, 16)[y]
    data = SimulationData(classes=["a", "b", "c"], positive_class="a", pool_x=x[:240], pool_y=y[:240],
                          test_x=x[240:], test_y=y[240:], pool_ids=np.arange(240))
    bald = run_strategy(data, "bald", seed=0, initial=12, step=12, budget=48)
    assert [p["labels"] for p in bald] == [12, 24, 36, 48]
    auto = run_strategy(data, "auto", seed=0, initial=12, step=10, budget=42)
    assert all("random" in p["next_batch"] for p in auto[:-1])
    assert "typiclust" in auto[0]["next_batch"]  # exploration starts with the cold-start strategy
