"""Benchmark: latency and peak memory of one `suggest` selection over large synthetic pools.

    .venv/bin/python bench/bench_suggest_scale.py                       # 10k, 100k and 1M; budgets 16 and 64
    .venv/bin/python bench/bench_suggest_scale.py --sizes 10000 --strategies entropy --budgets 16

Each (pool size, strategy, budget) case runs in its own child process on a synthetic pool: N
L2-normalised 512-d embeddings in clusters of uneven size, 4-class probabilities that are unsure
near cluster borders, 1% of the pool labeled. A case times `active.strategies.select` (the query
inputs are built inside the timed call, near-duplicate filtering included) and reports the median of
a few calls (one call for the largest pools) and the child's peak RSS, before (pool only) and after
the calls. Prints a short table; full numbers go to bench/results/suggest_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
N_CLASSES = 4
_BLOCK = 65_536


def synthetic_pool(n: int, dim: int, seed: int) -> tuple:
    """(embeddings (n, dim) float32 unit rows, probs (n, 4), labeled mask) of a clustered synthetic pool,
    generated block by block so the pool itself is the only large allocation."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_clusters = 100
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.dirichlet(np.full(n_clusters, 0.7))  # uneven cluster sizes
    cluster = rng.choice(n_clusters, size=n, p=weights)
    cluster_class = rng.integers(N_CLASSES, size=n_clusters)
    emb = np.empty((n, dim), dtype=np.float32)
    logits = np.empty((n, N_CLASSES), dtype=np.float64)
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        block *= 0.035
        block += centres[cluster[start:stop]]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        emb[start:stop] = block
        strength = rng.gamma(2.0, 1.5, size=stop - start)  # small near borders: unsure predictions
        logits[start:stop] = rng.standard_normal((stop - start, N_CLASSES))
        logits[start:stop, :] *= 0.5
        logits[np.arange(start, stop), cluster_class[cluster[start:stop]]] += strength
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    labeled = np.zeros(n, dtype=bool)
    labeled[rng.choice(n, size=max(1, n // 100), replace=False)] = True
    return emb, probs, labeled


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB; ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(n: int, strategy: str, budget: int, repeats: int, dim: int, seed: int) -> dict:
    """One case, in this (child) process: build the pool, warm up, time `repeats` selections."""
    import faiss

    from active.strategies import QueryInputs, select

    t0 = time.perf_counter()
    emb, probs, labeled = synthetic_pool(n, dim, seed)
    generate_s = time.perf_counter() - t0
    # warm-up on a small slice: imports, BLAS and OpenMP thread start-up are not part of a suggest call
    m = min(n, 2000)
    select(strategy, QueryInputs(labeled=labeled[:m], embeddings=emb[:m], probs=probs[:m]), budget, seed=seed)
    rss_pool = peak_rss_mb()
    times, cpu_times = [], []
    for r in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        ranked = select(strategy, QueryInputs(labeled=labeled, embeddings=emb, probs=probs), budget, seed=seed + r)
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
    assert len(ranked.indices) == budget and not labeled[ranked.indices].any()
    return {"n": n, "strategy": strategy, "budget": budget, "dim": dim, "labeled": int(labeled.sum()),
            "seconds": times, "median_s": statistics.median(times), "cpu_seconds": cpu_times,
            "median_cpu_s": statistics.median(cpu_times), "generate_s": generate_s,
            "peak_rss_pool_mb": rss_pool, "peak_rss_mb": peak_rss_mb(), "faiss_threads": faiss.omp_get_max_threads(),
            "picked": ranked.indices[:5].tolist()}


def machine() -> dict:
    """What the numbers were measured on."""
    import faiss
    import numpy as np

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gb, 1),
            "python": platform.python_version(), "numpy": np.__version__, "faiss": faiss.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--strategies", default="entropy,coreset,typiclust,hybrid")
    parser.add_argument("--budgets", default="16,64")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case (one for pools over 100k)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per case before it is abandoned")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "suggest_scale.json")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: N,STRATEGY,BUDGET,REPEATS
    args = parser.parse_args()

    if args.case:  # child process: one case, JSON on the last line of stdout
        n, strategy, budget, repeats = args.case.split(",")
        print(json.dumps(run_case(int(n), strategy, int(budget), int(repeats), args.dim, args.seed)))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    strategies = [s.strip() for s in args.strategies.split(",")]
    budgets = [int(b) for b in args.budgets.split(",")]
    report = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "cases": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{'pool':>9} {'strategy':<10} {'budget':>6} {'median s':>9} {'CPU s':>7} {'pool RSS MiB':>12} "
          f"{'peak RSS MiB':>12} {'load':>5}", flush=True)
    for n in sizes:
        for strategy in strategies:
            for budget in budgets:
                repeats = args.repeats if n <= 100_000 else 1
                cmd = [sys.executable, __file__, "--case", f"{n},{strategy},{budget},{repeats}", "--dim",
                       str(args.dim), "--seed", str(args.seed)]
                load_before = os.getloadavg()[0]
                t = time.perf_counter()
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO)
                    ok = proc.returncode == 0
                    case = json.loads(proc.stdout.strip().splitlines()[-1]) if ok else {
                        "n": n, "strategy": strategy, "budget": budget, "error": proc.stderr[-2000:]}
                except subprocess.TimeoutExpired:
                    case = {"n": n, "strategy": strategy, "budget": budget, "error": f"timeout after {args.timeout}s"}
                case["wall_s"] = time.perf_counter() - t
                case["load_avg_1min_before"] = load_before
                # the children's peak as the kernel saw it (max over every child so far), as a cross-check
                case["children_max_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
                report["cases"].append(case)
                args.out.write_text(json.dumps(report, indent=2) + "\n")
                if "error" in case:
                    print(f"{n:>9} {strategy:<10} {budget:>6}  FAILED: {case['error'][-300:]}", flush=True)
                else:
                    print(f"{n:>9} {strategy:<10} {budget:>6} {case['median_s']:>9.3f} {case['median_cpu_s']:>7.2f} "
                          f"{case['peak_rss_pool_mb']:>12.0f} {case['peak_rss_mb']:>12.0f} {load_before:>5.1f}",
                          flush=True)
    print(f"full numbers: {args.out}")


if __name__ == "__main__":
    main()
