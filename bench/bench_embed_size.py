"""Embedding resolution: the project's SSL checkpoint applied at its pretraining size and at larger sizes, judged by
the linear probe (the loop's own, C = 0.1) on random labelled subsets and on all labels, per dataset, with the spread
over seeds. SSL views are random crops, so objects look larger in pretraining than in a whole image at the same
size; embedding at a somewhat larger size than the pretraining one can undo that (Touvron et al., "Fixing the
train-test resolution discrepancy", NeurIPS 2019).

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_embed_size.py --project bench/results/radiography2-e10/project \
        bench/results/cxr4-e10/project --sizes 128,160,192 --seeds 5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, nargs="+", required=True)
    parser.add_argument("--sizes", default="128,160,192", help="embedding sizes in pixels (the first is the baseline)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--labels", default="20,40,80,160,320,all")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "embed_size.json")
    args = parser.parse_args()

    from active.engine.rounds import latest_round
    from active.engine.simulate import _score, load_simulation_data
    from models.embed import embed_paths
    from models.probe import fit_probe
    from store.project import open_project

    report: dict[str, dict] = {}
    for path in args.project:
        project = open_project(path)
        data = load_simulation_data(project)
        checkpoint = latest_round(project, "pretrain")["checkpoint"]
        rows: dict[str, dict] = {}
        for size in (int(s) for s in args.sizes.split(",")):
            started = time.perf_counter()
            x = embed_paths(checkpoint, list(data.pool_paths) + list(data.test_paths), image_size=size, progress=False)
            seconds = time.perf_counter() - started
            pool_x, test_x = x[:len(data.pool_y)], x[len(data.pool_y):]
            per: dict[str, list[float]] = {}
            for n in args.labels.split(","):
                k = len(data.pool_y) if n == "all" else int(n)
                scores = []
                for seed in range(args.seeds if n != "all" else 1):
                    chosen = np.random.default_rng(seed).choice(len(data.pool_y), k, replace=False)
                    if len(np.unique(data.pool_y[chosen])) < 2:
                        continue
                    probe = fit_probe(pool_x[chosen], data.pool_y[chosen], len(data.classes), C=0.1, seed=seed)
                    scores.append(_score(data, probe.predict_proba(test_x))["macro_auc"])
                per[n] = scores
            rows[str(size)] = {"embed_s": seconds, "images": len(x),
                               "macro_auc": {n: [float(np.mean(v)), float(np.std(v))] for n, v in per.items()}}
            print(f"{path.parent.name} {size:>4} px ({len(x) / seconds:.0f} img/s): "
                  + "  ".join(f"{n} {np.mean(v):.4f}±{np.std(v):.4f}" for n, v in per.items()), flush=True)
        report[str(path)] = {"checkpoint": checkpoint, "sizes": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
