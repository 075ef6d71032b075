"""Which SSL method the CPU affords best: the same probe on embeddings of each method, all labels and small budgets.

    .venv/bin/python bench/bench_ssl_methods.py --phantoms simclr moco byol --project bench/results/radiography2-e10/project bench/results/radiography2-moco-e10/project

--phantoms: for each method, a phantom pool (bench_label_efficiency's: 1,600 images at 64 px, four imbalanced
classes, a fixed 20% test split) pretrained with that method (--phantom-epochs) and embedded; --project: projects
already pretrained and embedded (bench_real_data.py --method M leaves one per method). For each: the product's
probe (models.probe.fit_probe, its default regularisation) on all pool labels and on random subsets of 40 / 100 /
200 labels (--seeds draws each), test macro-AUC and balanced accuracy. Results: bench/results/ssl_methods.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_label_efficiency import RESULTS, phantom_project, t_interval


def evaluate(project, seeds: int, budgets: list[int]) -> dict:
    """All-label and small-budget probe metrics of a project's latest embeddings."""
    from active.engine.simulate import _score, load_simulation_data
    from models.probe import fit_probe

    data = load_simulation_data(project)
    params = project.db.rounds("pretrain").iloc[-1]["params"]
    out = {"method": params.get("method"), "epochs": params.get("epochs"), "image_size": params.get("image_size"),
           "pool": int(len(data.pool_y)), "test": int(len(data.test_y))}
    full = _score(data, fit_probe(data.pool_x, data.pool_y, len(data.classes)).predict_proba(data.test_x))
    out["all"] = {"macro_auc": full["macro_auc"], "balanced_accuracy": full["balanced_accuracy"]}
    for n in budgets:
        aucs = []
        for seed in range(seeds):
            rows = np.random.default_rng(seed).choice(len(data.pool_y), n, replace=False)
            if len(np.unique(data.pool_y[rows])) < 2:
                continue
            probe = fit_probe(data.pool_x[rows], data.pool_y[rows], len(data.classes), seed=seed)
            aucs.append(_score(data, probe.predict_proba(data.test_x))["macro_auc"])
        mean, low, high = t_interval(np.array(aucs))
        out[str(n)] = {"macro_auc": mean, "ci": [low, high], "seeds": len(aucs)}
    return out


def pretrain_as(method: str, seed: int):
    """phantom_project's pretraining step with this method and pretraining seed."""
    from active.engine.rounds import pretrain

    def run(project, **options):
        return pretrain(project, method=method, **{**options, "seed": seed})

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", nargs="*", default=[], help="SSL methods to pretrain phantom pools with")
    parser.add_argument("--phantom-epochs", type=int, default=5)
    parser.add_argument("--pretrain-seeds", type=int, nargs="+", default=[0], help="pretraining seeds per method")
    parser.add_argument("--project", type=Path, nargs="*", default=[])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budgets", default="40,100,200")
    parser.add_argument("--out", type=Path, default=RESULTS / "ssl_methods.json")
    args = parser.parse_args()
    from store.project import open_project

    budgets = [int(b) for b in args.budgets.split(",")]
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    for method in args.phantoms:
        for seed in args.pretrain_seeds:  # the same phantom pool, pretrained from another seed
            tail = (f"-e{args.phantom_epochs}" if args.phantom_epochs != 5 else "") + (f"-s{seed}" if seed else "")
            name = f"phantoms-{method}{tail}"
            start = time.perf_counter()
            project = phantom_project(RESULTS / "ssl_methods" / name, epochs=args.phantom_epochs,
                                      pretrain_with=pretrain_as(method, seed))
            key = (f"phantoms/{method}" + (f"/e{args.phantom_epochs}" if args.phantom_epochs != 5 else "")
                   + (f"/seed{seed}" if seed else ""))
            report[key] = {**evaluate(project, args.seeds, budgets), "pretrain_seed": seed,
                           "prepare_s": round(time.perf_counter() - start, 1)}
            print(f"{key}: {json.dumps(report[key])}", flush=True)
    for path in args.project:
        report[str(path)] = evaluate(open_project(path), args.seeds, budgets)
        print(f"{path}: {json.dumps(report[str(path)])}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
