"""Oracle simulation: replay active learning with hidden ground truth and compare strategies.

The test split is fixed before any selection; SSL embeddings are computed once and shared by every
(strategy, seed) run; each run starts from the same seeded random initial set, fits a probe on
the labels it has, scores the test split, asks its strategy for the next `step` images and
"labels" them from the oracle, until the budget is spent.

With mode "finetune" each round instead fine-tunes backbone + head from the project's SSL checkpoint on
the labeled images (a small-budget recipe, FinetuneRecipe) and predicts pool and test images; its MC-dropout
samples and penultimate features feed BALD and BADGE. A fine-tuning per point: slow, a GPU job beyond toy sizes.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from active.engine.jobs import FINETUNE_DROPOUT, MC_SAMPLES, TRAIN_MODES
from store.errors import CxrAlError
from store.project import Project

CURVE_METRICS = ("macro_auc", "accuracy", "balanced_accuracy", "macro_f1", "hm")
DEFAULT_STRATEGIES = ("random", "auto", "entropy", "margin", "coreset", "typiclust", "probcover", "badge", "hybrid")
THRESHOLDS = (0.90, 0.95, 0.98)


@dataclass
class SimulationData:
    """Everything a run needs, as arrays: pool and test embeddings with their oracle labels."""

    classes: list[str]
    positive_class: str
    pool_x: np.ndarray
    pool_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    pool_ids: np.ndarray
    pool_paths: tuple[str, ...] = ()  # image files, for fine-tuning (mode finetune)
    test_paths: tuple[str, ...] = ()


@dataclass
class ModelOutputs:
    """What one simulated round's model says: pool and test class probabilities and, for BALD and BADGE, the
    pool's (T, N, C) probability samples and penultimate features when the model gives them."""

    pool_probs: np.ndarray
    test_probs: np.ndarray
    pool_mc: np.ndarray | None = None
    pool_features: np.ndarray | None = None


FitPredict = Callable[[SimulationData, np.ndarray, int], ModelOutputs]  # (data, labeled mask, seed)


@dataclass(frozen=True)
class FinetuneRecipe:
    """How a simulated round fine-tunes: a small budget for the few labels of early rounds. Class-weighted loss,
    a stratified validation part of the labels with early stopping (none while a class has a single label),
    dropout before the head for MC-dropout samples."""

    checkpoint: str | None  # SSL backbone to start from; None: `backbone` from `init`
    backbone: str = "resnet18"
    init: str = "random"
    image_size: int = 224
    epochs: int = 5
    batch_size: int = 32
    val_fraction: float = 0.2
    patience: int = 2
    dropout: float = FINETUNE_DROPOUT
    mc_samples: int = MC_SAMPLES
    device: str = "auto"


def load_simulation_data(project: Project) -> SimulationData:
    """Pool and test embeddings of a project with hidden ground truth (ingested --as oracle)."""
    from active.engine.artifacts import embeddings_for

    images = project.db.images()
    oracle = project.db.oracle_labels().merge(images[["id", "split"]], left_on="image_id", right_on="id")
    oracle = oracle[oracle["label"].isin(project.classes)]
    if oracle.empty:
        raise CxrAlError("simulation needs hidden ground truth: ingest with --labels-from ... --as oracle")
    pool = oracle[oracle["split"] == "pool"].sort_values("image_id")
    test = oracle[oracle["split"] == "test"].sort_values("image_id")
    if test.empty:
        raise CxrAlError("simulation needs a test split: ingest with --test-fraction > 0")
    index = {c: i for i, c in enumerate(project.classes)}
    path_of = images.set_index("id")["path"]
    return SimulationData(
        classes=project.classes, positive_class=project.config["positive_class"],
        pool_x=embeddings_for(project, pool["image_id"].to_numpy(np.int64)),
        pool_y=pool["label"].map(index).to_numpy(np.int64),
        test_x=embeddings_for(project, test["image_id"].to_numpy(np.int64)),
        test_y=test["label"].map(index).to_numpy(np.int64), pool_ids=pool["image_id"].to_numpy(np.int64),
        pool_paths=tuple(path_of.loc[pool["image_id"]]), test_paths=tuple(path_of.loc[test["image_id"]]))


def _prior(data: SimulationData, labeled: np.ndarray) -> np.ndarray | None:
    """The smoothed label frequencies when the labeled rows show a single class (all a model can say then), else
    None."""
    y = data.pool_y[labeled]
    if len(np.unique(y)) >= 2:
        return None
    prior = np.bincount(y, minlength=len(data.classes)) + 1.0
    return prior / prior.sum()


def probe_outputs(data: SimulationData, labeled: np.ndarray, seed: int, samples: bool = True) -> ModelOutputs:
    """A round of mode probe, as the loop runs it: a linear probe on the labeled rows' embeddings and its seeded
    bootstrap ensemble, whose samples BALD scores (`samples=False` skips them for strategies that never read
    them: the probe's predictions are the same either way)."""
    from models.probe import fit_probe, fit_probe_ensemble

    prior = _prior(data, labeled)
    if prior is not None:
        return ModelOutputs(np.tile(prior, (len(data.pool_x), 1)), np.tile(prior, (len(data.test_x), 1)))
    x, y = data.pool_x[labeled], data.pool_y[labeled]
    probe = fit_probe(x, y, n_classes=len(data.classes), seed=seed)
    pool_mc = None
    if samples:
        pool_mc = fit_probe_ensemble(x, y, len(data.classes), base=probe, seed=seed).predict_samples(data.pool_x)
    return ModelOutputs(probe.predict_proba(data.pool_x), probe.predict_proba(data.test_x), pool_mc=pool_mc)


def finetune_outputs(recipe: FinetuneRecipe, work_dir: Path) -> FitPredict:
    """A round of mode finetune: backbone + head fine-tuned on the labeled images (its checkpoint in a temporary
    folder in work_dir, removed after), then pool and test images predicted with MC-dropout samples."""
    if not 0.0 < recipe.dropout < 1.0 or recipe.mc_samples < 1:
        raise CxrAlError("simulation fine-tuning needs 0 < dropout < 1 and mc_samples >= 1 (BALD's samples)")

    def fit(data: SimulationData, labeled: np.ndarray, seed: int) -> ModelOutputs:
        from models.finetune import finetune, predict_outputs

        n_pool = len(data.pool_y)
        if len(data.pool_paths) != n_pool or len(data.test_paths) != len(data.test_y):
            raise CxrAlError("fine-tuning simulation needs the image paths of pool and test (load_simulation_data)")
        prior = _prior(data, labeled)
        if prior is not None:  # nothing to learn from one class: the prior, with samples that agree
            tiled = np.tile(prior, (n_pool, 1))
            return ModelOutputs(tiled, np.tile(prior, (len(data.test_y), 1)),
                                np.broadcast_to(tiled, (recipe.mc_samples, *tiled.shape)))
        rows = np.flatnonzero(labeled)
        work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="finetune-", dir=work_dir) as tmp:
            result = finetune([data.pool_paths[i] for i in rows], data.pool_y[rows], data.classes, tmp,
                              checkpoint=recipe.checkpoint, backbone=recipe.backbone, init=recipe.init,
                              image_size=recipe.image_size, epochs=recipe.epochs, batch_size=recipe.batch_size,
                              val_fraction=recipe.val_fraction, balance="weights", patience=recipe.patience,
                              mc_dropout=recipe.dropout, device=recipe.device, seed=seed, progress=False)
        out = predict_outputs(result.classifier, list(data.pool_paths) + list(data.test_paths), recipe.image_size,
                              batch_size=recipe.batch_size, device=recipe.device, mc_samples=recipe.mc_samples,
                              seed=seed)
        return ModelOutputs(out.probs[:n_pool], out.probs[n_pool:], out.mc_probs[:, :n_pool], out.features[:n_pool])

    return fit


def finetune_recipe(project: Project, *, checkpoint: str | None = None, init: str | None = None, epochs: int = 5,
                    batch_size: int = 32, device: str = "auto") -> FinetuneRecipe:
    """The fine-tuning recipe of a simulation on this project: from `checkpoint`, else the project's latest SSL
    backbone, else an un-pretrained backbone from `init` (random); at the project's image size."""
    from active.engine.rounds import latest_round

    if checkpoint is None and init is None:
        run = latest_round(project, "pretrain")
        checkpoint = run["checkpoint"] if run else None
    if epochs < 1 or batch_size < 1:
        raise CxrAlError("need --epochs >= 1 and a batch size >= 1 for fine-tuning")
    return FinetuneRecipe(checkpoint=checkpoint, backbone=project.config.get("backbone", "resnet18"),
                          init=str(init or "random"), image_size=int(project.config["image_size"]), epochs=epochs,
                          batch_size=batch_size, device=device)


def _score(data: SimulationData, test_probs: np.ndarray) -> dict[str, float]:
    from models.metrics import classification_metrics

    m = classification_metrics(data.test_y, test_probs, data.classes, positive_class=data.positive_class,
                               n_bootstrap=0)
    return {k: (float(m[k]) if m.get(k) is not None else float("nan")) for k in CURVE_METRICS}


def run_strategy(data: SimulationData, strategy: str, seed: int, initial: int, step: int, budget: int,
                 on_point: Callable[[dict[str, Any]], None] | None = None,
                 fit: FitPredict = probe_outputs, random_share: float | None = None) -> list[dict[str, Any]]:
    """One learning curve: points (labels used, metrics) from `initial` to `budget` labels; `fit` is the round's
    model (a probe, or finetune_outputs)."""
    from active.engine.evidence import label_gains
    from active.strategies import REGISTRY, QueryInputs, select

    if fit is probe_outputs and "mc_probs" not in REGISTRY[strategy].needs:
        fit = partial(probe_outputs, samples=False)  # the ensemble costs ten fits a point; only BALD reads it

    n_pool = len(data.pool_x)
    budget = min(budget, n_pool)
    rng = np.random.default_rng(seed)
    labeled = np.zeros(n_pool, dtype=bool)
    labeled[rng.choice(n_pool, size=min(initial, n_pool), replace=False)] = True
    sources = np.full(n_pool, "", dtype=object)  # which strategy (or auto part) picked each labeled row
    sources[labeled] = "random"  # the initial set is drawn at random: auto's evidence may use it
    points = []
    while True:
        t0 = time.perf_counter()
        outputs = fit(data, labeled, seed)
        point = {"strategy": strategy, "seed": seed, "labels": int(labeled.sum()), **_score(data, outputs.test_probs)}
        # how many images of each class the strategy has had labeled: rare findings found per label
        found = np.bincount(data.pool_y[labeled], minlength=len(data.classes))
        point.update({f"labeled_{name}": int(count) for name, count in zip(data.classes, found, strict=True)})
        point["fit_seconds"] = time.perf_counter() - t0
        points.append(point)
        if on_point:
            on_point(point)
        if labeled.sum() >= budget:
            break
        n_next = int(min(step, budget - labeled.sum()))
        t0 = time.perf_counter()
        gains = None
        if strategy == "auto" and outputs.pool_probs is not None:
            gains = label_gains(data.pool_x[labeled], data.pool_y[labeled], sources[labeled], len(data.classes),
                                seed=seed)
        inputs = QueryInputs(labeled=labeled, embeddings=data.pool_x, probs=outputs.pool_probs,
                             mc_probs=outputs.pool_mc, features=outputs.pool_features, arm_gains=gains,
                             random_share=random_share)
        ranked = select(strategy, inputs, n_next, seed=seed * 1000 + int(labeled.sum()))
        point["select_seconds"] = time.perf_counter() - t0
        if len(ranked.indices) == 0:
            break
        labeled[ranked.indices] = True
        sources[ranked.indices] = ranked.sources if ranked.sources is not None else strategy
        point["next_batch"] = ",".join(sorted(set(sources[ranked.indices])))
    return points


def summarise(curves: pd.DataFrame, full: dict[str, float], metric: str = "macro_auc") -> pd.DataFrame:
    """Per strategy: labels needed to reach 90/95/98% of the full-label metric (mean over seeds), the
    normalised area under the mean learning curve, and the labels needed relative to random."""
    rows = []
    mean = curves.groupby(["strategy", "labels"])[metric].mean().reset_index()
    for strategy, g in mean.groupby("strategy", sort=False):
        g = g.sort_values("labels")
        x, y = g["labels"].to_numpy(float), g[metric].to_numpy(float)
        row: dict[str, Any] = {"strategy": strategy, "final_labels": int(x[-1]), f"final_{metric}": float(y[-1])}
        span = x[-1] - x[0]
        row["aulc"] = float(np.trapezoid(y, x) / span) if span > 0 else float(y[0])
        for t in THRESHOLDS:
            reached = x[y >= t * full[metric]]
            row[f"labels_to_{int(t * 100)}pct"] = int(reached[0]) if len(reached) else None
        rows.append(row)
    out = pd.DataFrame(rows)
    if "random" in set(out["strategy"]):
        rand = out.set_index("strategy").loc["random"]
        for t in THRESHOLDS:
            col = f"labels_to_{int(t * 100)}pct"
            base = rand[col]
            out[f"ratio_vs_random_{int(t * 100)}pct"] = [
                (v / base) if (v is not None and not pd.isna(v) and base is not None and not pd.isna(base)) else None
                for v in out[col]]
    out["full_label_" + metric] = full[metric]
    return out


def plot_curves(curves: pd.DataFrame, full: dict[str, float], path: Path, metric: str = "macro_auc",
                title: str = "") -> Path:
    """Metric versus labels used: mean over seeds with a min-max band, and the full-label line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for strategy, g in curves.groupby("strategy", sort=False):
        stats = g.groupby("labels")[metric].agg(["mean", "min", "max"])
        style = {"color": "black", "linestyle": "--"} if strategy == "random" else {}
        ax.plot(stats.index, stats["mean"], label=strategy, linewidth=1.6, **style)
        ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.15, color=style.get("color"))
    ax.axhline(full[metric], color="grey", linewidth=1, linestyle=":", label=f"all labels ({full[metric]:.3f})")
    ax.set_xlabel("labels used")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title or f"label efficiency ({metric})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def simulate(project: Project, out_dir: Path | str, *, strategies: Sequence[str] = DEFAULT_STRATEGIES,
             seeds: int = 3, initial: int = 20, step: int = 20, budget: int = 400, mode: str = "probe",
             metric: str = "macro_auc", progress: Callable[[dict[str, Any]], None] | None = None,
             record: bool = True, recipe: FinetuneRecipe | None = None) -> dict[str, Any]:
    """Run every (strategy, seed) learning curve; write curves.csv, curves.png and summary.csv to out_dir.

    mode "finetune" fine-tunes per point with `recipe` (default: finetune_recipe(project)), so one curve costs
    (budget - initial) / step + 1 fine-tunings, plus one on all pool labels for the reference."""
    from active.strategies import STRATEGIES

    if mode not in TRAIN_MODES:
        raise CxrAlError(f"unknown simulation mode {mode!r}; use {' or '.join(TRAIN_MODES)}")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise CxrAlError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    if initial < 1 or step < 1 or budget < initial:
        raise CxrAlError("need --initial >= 1, --step >= 1 and --budget >= --initial")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_simulation_data(project)
    started = time.perf_counter()
    fit = probe_outputs
    if mode == "finetune":
        recipe = recipe or finetune_recipe(project)
        fit = finetune_outputs(recipe, out)
    full = _score(data, fit(data, np.ones(len(data.pool_x), dtype=bool), 0).test_probs)
    points = []
    for seed in range(seeds):
        for strategy in strategies:
            points += run_strategy(data, strategy, seed, initial, step, budget, on_point=progress, fit=fit,
                                   random_share=float(project.round_policy["random_share"]))
    curves = pd.DataFrame(points)
    curves.to_csv(out / "curves.csv", index=False)
    summary = summarise(curves, full, metric)
    summary.to_csv(out / "summary.csv", index=False)
    plot_curves(curves, full, out / "curves.png", metric, title=f"{project.config.get('name')}: label efficiency")
    result = {"out_dir": str(out.resolve()), "full_label": full, "pool": int(len(data.pool_x)),
              "test": int(len(data.test_x)), "seconds": time.perf_counter() - started,
              "summary": json.loads(summary.to_json(orient="records"))}
    (out / "simulation.json").write_text(json.dumps(result, indent=2))
    if record:
        params = {"strategies": list(strategies), "seeds": seeds, "initial": initial, "step": step,
                  "budget": budget, "mode": mode, "metric": metric}
        if mode == "finetune":
            params["recipe"] = asdict(recipe)
        round_id = project.db.start_round("simulate", params)
        project.db.finish_round(round_id, checkpoint=None, metrics={
            "curves": str((out / "curves.csv").resolve()), "summary": result["summary"], "full_label": full})
    return result


def project_for_simulation(source: Path | str, out_dir: Path, *, checkpoint: str | None = None,
                           init: str | None = None, pretrain_epochs: int = 5, test_fraction: float = 0.2,
                           image_size: int = 128, seed: int = 0, in_child: bool = True) -> Project:
    """The project a simulation runs on: SOURCE itself when it is a project, else a project made in
    OUT/project from an ImageFolder of labeled images (ground truth hidden as oracle labels),
    pretrained and embedded once; a second run reuses it."""
    from active.engine.artifacts import EMBEDDINGS_NAME
    from active.engine.rounds import embed, latest_round, pretrain
    from store.ingest import ingest_folder
    from store.project import CONFIG_NAME, init_project, open_project

    source = Path(source)
    if (source / CONFIG_NAME).exists():
        project = open_project(source)
    else:
        if not source.is_dir():
            raise CxrAlError(f"{source}: neither a project nor a folder of images")
        classes = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(classes) < 2:
            raise CxrAlError(f"{source} needs one sub-folder per class (ImageFolder layout), found {classes}")
        target = Path(out_dir) / "project"
        if (target / CONFIG_NAME).exists():
            project = open_project(target)
        else:
            project = init_project(target, classes, image_size=image_size, name=source.name)
            ingest_folder(project.db, source, project.classes, labels_from="folders", labels_as="oracle",
                          test_fraction=test_fraction, seed=seed)
    if not (project.artifacts / EMBEDDINGS_NAME).exists():
        if checkpoint is None and init is None and latest_round(project, "pretrain") is None:
            pretrain(project, epochs=pretrain_epochs, seed=seed, in_child=in_child)
        embed(project, checkpoint=checkpoint, init=init, in_child=in_child)
    return project
