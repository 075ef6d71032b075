"""Fixed probe regularisation (C=0.1) against C chosen by cross-validation on the labelled set, on the learning
curve of random sampling (so only the probe differs), per dataset, with the spread over seeds.

    .venv/bin/python bench/bench_probe_c.py --project bench/results/cxr4-e10/project --seeds 5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--labels", default="20,40,80,160,320,all")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "probe_c.json")
    args = parser.parse_args()

    from active.engine.simulate import _score, load_simulation_data
    from models.probe import fit_probe
    from store.project import open_project

    report = {}
    for path in args.project:
        data = load_simulation_data(open_project(path))
        rows = {}
        for n in args.labels.split(","):
            k = len(data.pool_y) if n == "all" else int(n)
            per = {"fixed": [], "cv": [], "chosen_c": []}
            for seed in range(args.seeds if n != "all" else 1):
                rng = np.random.default_rng(seed)
                rows_ = rng.choice(len(data.pool_y), k, replace=False)
                if len(np.unique(data.pool_y[rows_])) < 2:
                    continue
                for name, c in (("fixed", 0.1), ("cv", "cv")):
                    probe = fit_probe(data.pool_x[rows_], data.pool_y[rows_], len(data.classes), C=c, seed=seed)
                    per[name].append(_score(data, probe.predict_proba(data.test_x))["macro_auc"])
                    if name == "cv":
                        per["chosen_c"].append(float(probe.lr.C))
            rows[n] = {key: [float(np.mean(v)), float(np.min(v)), float(np.max(v))] for key, v in per.items() if v}
            print(f"{path.parent.name} {n:>4} labels: fixed {rows[n]['fixed'][0]:.4f}  cv {rows[n]['cv'][0]:.4f}  "
                  f"(C chosen {per['chosen_c']})", flush=True)
        report[str(path)] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
