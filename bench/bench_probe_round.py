"""Benchmark: one probe round (fit, predict every image, test metrics with bootstrap CIs) on synthetic embeddings.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_probe_round.py              # 2,000 x 512-d, 4 classes
    .venv/bin/python bench/bench_probe_round.py --images 2000 --labels 300 --test 400 --bootstrap 1000

The embeddings are four Gaussian clusters on the unit sphere with heavy overlap (a probe reaches roughly the
macro-AUC of a real round, not 1.0), so the fit does real lbfgs iterations. This is the work of the `train`
job of a probe round (active.engine.jobs._train) minus file writes. Prints the breakdown; full numbers go to
bench/results/probe_round.json. Target (issue): under 5 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synthetic_embeddings(n: int, dim: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 embeddings of n_classes overlapping clusters, and their class indices."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centres = rng.normal(size=(n_classes, dim))
    x = rng.normal(size=(n, dim)) + 0.12 * centres[y]
    return x.astype(np.float32), y


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--labels", type=int, default=300)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "probe_round.json")
    args = parser.parse_args()

    start = time.perf_counter()
    from models.metrics import classification_metrics
    from models.probe import fit_probe
    import_s = time.perf_counter() - start

    x, y = synthetic_embeddings(args.images, args.dim, args.classes, args.seed)
    order = np.random.default_rng(args.seed + 1).permutation(args.images)
    train_pos, test_pos = order[:args.labels], order[args.labels:args.labels + args.test]
    classes = [f"class{k}" for k in range(args.classes)]

    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        probe = fit_probe(x[train_pos], y[train_pos], n_classes=args.classes, seed=args.seed)
        t1 = time.perf_counter()
        probs = probe.predict_proba(x)
        t2 = time.perf_counter()
        point = classification_metrics(y[test_pos], probs[test_pos], classes, n_bootstrap=0)
        t3 = time.perf_counter()
        metrics = classification_metrics(y[test_pos], probs[test_pos], classes, n_bootstrap=args.bootstrap,
                                         seed=args.seed)
        t4 = time.perf_counter()
        runs.append({"fit_s": t1 - t0, "predict_s": t2 - t1, "metrics_s": t3 - t2,
                     "bootstrap_s": (t4 - t3) - (t3 - t2), "round_s": (t2 - t0) + (t4 - t3)})
    median = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}

    print(f"probe round: {args.images} x {args.dim}-d embeddings, {args.classes} classes, {args.labels} labels, "
          f"{args.test} test images, {args.bootstrap} bootstrap resamples (median of {args.repeats})")
    print(f"  {'imports':<28}{import_s:8.3f} s (once per process)")
    for key, label in (("fit_s", "fit probe"), ("predict_s", "predict all images"),
                       ("metrics_s", "metrics (point values)"), ("bootstrap_s", "bootstrap CIs"),
                       ("round_s", "round total")):
        print(f"  {label:<28}{median[key]:8.3f} s")
    print(f"  test macro-AUC {point['macro_auc']:.3f}, CI {metrics['ci']['macro_auc']}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "import_s": import_s, "median": median, "runs": runs,
        "macro_auc": point["macro_auc"], "ci": metrics["ci"]}, indent=2))
    print(f"full numbers: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
