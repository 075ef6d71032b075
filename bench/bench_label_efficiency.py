"""Label efficiency of every strategy, `auto` and random on real and phantom pools, with the spread over seeds.

    .venv/bin/python bench/bench_label_efficiency.py --dataset cxr4 radiography2 phantoms --seeds 5

Uses the projects that bench/bench_real_data.py left in bench/results/<dataset>-e10/project (pretrained and
embedded once), and for `phantoms` makes its own (1,600 phantoms at 64 px in four classes with 10% of the
rarest, SimCLR pretraining). Per dataset it runs the oracle simulation (probe rounds, +20 labels per round up
to 400) and reports, per strategy: labels to 90/95/98% of the all-label metric (mean curve), AULC with a 95%
t-interval over seeds, auto's ratios to random, and every budget where auto's mean curve falls below
random's band (mean - 1 sd over seeds). Full numbers: bench/results/label_efficiency/<dataset>/.

--variant V reads bench/results/<dataset>-V/project instead (phantoms: bench/results/phantoms-pool-V/project, which
must exist), e.g. a copy of a project re-embedded with another `embedding` in its project.yaml; results go to
bench/results/label_efficiency/<dataset>-V/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PHANTOM_CLASS_SHARES = {"Normal": 0.4, "Consolidation": 0.3, "GroundGlass": 0.2, "Interstitial": 0.1}


def phantom_project(out: Path, epochs: int, seed: int = 0, pretrain_with=None):
    """A phantom pool with hidden ground truth and a test split, pretrained (SimCLR, or pretrain_with(project,
    **options)) and embedded."""
    from active.engine.rounds import embed, latest_round, pretrain
    from store.ingest import ingest_folder
    from store.phantoms import write_phantom_dataset
    from store.project import CONFIG_NAME, init_project, open_project

    target = out / "project"
    if (target / CONFIG_NAME).exists():
        project = open_project(target)
    else:
        data = out / "data"
        for k, (cls, share) in enumerate(PHANTOM_CLASS_SHARES.items()):  # an imbalanced pool, like cxr4
            write_phantom_dataset(data / cls, n=int(1600 * share), seed=seed + k, size=64,
                                  lesion_strength=(1.0, 2.5), classes=(cls,))
        images = out / "images"
        for cls in PHANTOM_CLASS_SHARES:
            (images / cls).mkdir(parents=True, exist_ok=True)
            for path in (data / cls / "images" / cls).glob("*.png"):
                path.rename(images / cls / path.name)
        project = init_project(target, list(PHANTOM_CLASS_SHARES), image_size=64, name="phantoms")
        ingest_folder(project.db, images, project.classes, labels_from="folders", labels_as="oracle",
                      test_fraction=0.2, seed=seed)
    if latest_round(project, "pretrain") is None:
        (pretrain_with or pretrain)(project, epochs=epochs, batch_size=64, image_size=64, seed=seed)
    if project.db.rounds("embed").empty:
        embed(project)
    return project


def aulc_per_seed(curves: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Normalised area under each (strategy, seed) learning curve."""
    rows = []
    for (strategy, seed), g in curves.groupby(["strategy", "seed"], sort=False):
        g = g.sort_values("labels")
        x, y = g["labels"].to_numpy(float), g[metric].to_numpy(float)
        rows.append({"strategy": strategy, "seed": seed, "aulc": float(np.trapezoid(y, x) / (x[-1] - x[0]))})
    return pd.DataFrame(rows)


def t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): a 95% t-interval of the mean over seeds."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def report(curves: pd.DataFrame, summary: pd.DataFrame, metric: str) -> dict:
    """AULC with CIs, ratios to random, and the budgets where auto's mean is below random's band."""
    aulc = aulc_per_seed(curves, metric)
    table = summary.set_index("strategy")
    out = {"strategies": {}}
    for strategy, g in aulc.groupby("strategy", sort=False):
        mean, low, high = t_interval(g.sort_values("seed")["aulc"].to_numpy())
        row = table.loc[strategy]
        out["strategies"][strategy] = {
            "aulc": mean, "aulc_ci": [low, high],
            **{f"labels_to_{p}pct": (None if pd.isna(row[f"labels_to_{p}pct"]) else int(row[f"labels_to_{p}pct"]))
               for p in (90, 95, 98)}}
    if {"auto", "random"} <= set(aulc["strategy"]):
        paired = aulc.pivot(index="seed", columns="strategy", values="aulc")
        diff = (paired["auto"] - paired["random"]).to_numpy()
        mean, low, high = t_interval(diff)
        by = curves.groupby(["strategy", "labels"])[metric].agg(["mean", "std"]).reset_index()
        a = by[by["strategy"] == "auto"].set_index("labels")
        r = by[by["strategy"] == "random"].set_index("labels")
        below = [int(n) for n in a.index.intersection(r.index)
                 if a.loc[n, "mean"] < r.loc[n, "mean"] - r.loc[n, "std"]]
        ratios = {}
        for p in (90, 95, 98):
            ra, rr = out["strategies"]["auto"][f"labels_to_{p}pct"], out["strategies"]["random"][f"labels_to_{p}pct"]
            ratios[f"{p}pct"] = None if ra is None or rr is None else ra / rr
        out["auto_vs_random"] = {"aulc_difference": mean, "aulc_difference_ci": [low, high],
                                 "seeds_auto_ahead": int((diff > 0).sum()), "seeds": int(len(diff)),
                                 "labels_ratio": ratios, "budgets_below_random_band": below}
        arms = curves[curves["strategy"] == "auto"].get("next_batch")
        if arms is not None:
            out["auto_batches"] = arms.fillna("").value_counts().to_dict()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", default=["cxr4", "radiography2", "phantoms"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--initial", type=int, default=20)
    parser.add_argument("--step", type=int, default=20)
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--metric", default="macro_auc")
    parser.add_argument("--phantom-epochs", type=int, default=5)
    parser.add_argument("--variant", default="e10", help="project folder suffix (see above)")
    parser.add_argument("--strategies", default="random,auto,entropy,margin,least-confidence,bald,coreset,"
                                                 "typiclust,probcover,badge,hybrid")
    args = parser.parse_args()

    from bench_real_data import machine

    from active.engine.simulate import simulate
    from store.project import open_project

    all_results = {"machine": machine(), "args": vars(args)}
    for dataset in args.dataset:
        default = args.variant == "e10"
        out = RESULTS / "label_efficiency" / (dataset if default else f"{dataset}-{args.variant}")
        out.mkdir(parents=True, exist_ok=True)
        if dataset == "phantoms" and default:
            project = phantom_project(RESULTS / "phantoms-pool", args.phantom_epochs)
        else:
            path = RESULTS / (f"phantoms-pool-{args.variant}" if dataset == "phantoms" else
                              f"{dataset}-{args.variant}") / "project"
            if not path.exists():
                raise SystemExit(f"{path} missing: run bench/bench_real_data.py --dataset {dataset} --epochs 10 "
                                 f"--image-size 128 --out bench/results/{dataset}-e10 first")
            project = open_project(path)
        t0 = time.perf_counter()
        sim = simulate(project, out, strategies=args.strategies.split(","), seeds=args.seeds, initial=args.initial,
                       step=args.step, budget=args.budget, metric=args.metric, record=False)
        curves = pd.read_csv(out / "curves.csv")
        result = {"pool": sim["pool"], "test": sim["test"], "full_label": sim["full_label"],
                  "seconds": time.perf_counter() - t0, **report(curves, pd.DataFrame(sim["summary"]), args.metric)}
        (out / "report.json").write_text(json.dumps(result, indent=2, default=str))
        all_results[dataset] = result
        full = sim["full_label"]
        print(f"\n{dataset}: pool {sim['pool']}, test {sim['test']}, all-label {args.metric} {full[args.metric]:.3f}, "
              f"balanced accuracy {full['balanced_accuracy']:.3f}; {result['seconds']:.0f} s")
        rows = [{"strategy": s, "AULC": f"{v['aulc']:.4f} [{v['aulc_ci'][0]:.4f}, {v['aulc_ci'][1]:.4f}]",
                 "90%": v["labels_to_90pct"], "95%": v["labels_to_95pct"], "98%": v["labels_to_98pct"]}
                for s, v in result["strategies"].items()]
        print(pd.DataFrame(rows).to_string(index=False))
        if "auto_vs_random" in result:
            print("auto vs random:", json.dumps(result["auto_vs_random"]))
            print("auto's batches:", json.dumps(result.get("auto_batches", {})))
    (RESULTS / "label_efficiency" / ("all.json" if args.variant == "e10" else f"all-{args.variant}.json")).write_text(json.dumps(all_results, indent=2, default=str))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
