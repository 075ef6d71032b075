"""Embedding variants of the project's SSL checkpoint, judged by the linear probe (the loop's own, C = 0.1) on random
labelled subsets and on all labels, per dataset, with the spread over seeds:

- resolution (--sizes): the pretraining size and larger ones. SSL views are random crops, so objects look larger in
  pretraining than in a whole image at the same size; embedding at a somewhat larger size than the pretraining one
  can undo that (Touvron et al., "Fixing the train-test resolution discrepancy", NeurIPS 2019).
- feature layers (--layers): the product's embedding is the pooled last block (layer4); a short SSL schedule may
  leave more of what separates the classes in earlier blocks, so pooled layer3 (and layer2) features, alone and
  concatenated with layer4 (each block L2-normalised first), are scored beside it.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_embed_size.py --project bench/results/radiography2-e10/project \
        bench/results/cxr4-e10/project --sizes 128,160,192 --seeds 5
    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_embed_size.py --project P --sizes 128 --layers layer4,layer3,layer3+layer4
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
    parser.add_argument("--layers", default="layer4", help="feature variants: blocks joined by +, comma-separated "
                        "(layer4 is the product's embedding)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "embed_size.json")
    args = parser.parse_args()

    from active.engine.rounds import latest_round
    from active.engine.simulate import load_simulation_data
    from models.embed import embed_paths
    from store.project import open_project

    report: dict[str, dict] = {}
    for path in args.project:
        project = open_project(path)
        data = load_simulation_data(project)
        checkpoint = latest_round(project, "pretrain")["checkpoint"]
        rows: dict[str, dict] = {}
        for size in (int(s) for s in args.sizes.split(",")):
            started = time.perf_counter()
            paths = list(data.pool_paths) + list(data.test_paths)
            if args.layers == "layer4":
                variants = {"layer4": embed_paths(checkpoint, paths, image_size=size, progress=False)}
            else:
                variants = layer_variants(checkpoint, paths, size, args.layers.split(","))
            seconds = time.perf_counter() - started
            for name, x in variants.items():
                key = str(size) if name == "layer4" else f"{size}/{name}"
                rows[key] = score_variant(data, x, args, seeds_label=f"{path.parent.name} {size:>4} px {name}")
                rows[key]["embed_s"] = seconds
        report[str(path)] = {"checkpoint": checkpoint, "sizes": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


def layer_variants(checkpoint, paths: list, size: int, names: list[str]) -> dict[str, np.ndarray]:
    """Pooled features of the named ResNet blocks in one pass (each L2-normalised), joined as the variants ask."""
    import torch
    from torch.utils.data import DataLoader

    from models.backbones import load_checkpoint
    from models.embed import ReadErrorsAsValues, raise_read_errors

    blocks = sorted({b for name in names for b in name.split("+")})
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    pooled: dict[str, list[np.ndarray]] = {b: [] for b in blocks}
    with torch.inference_mode():
        for x, errors in DataLoader(ReadErrorsAsValues(paths, size), batch_size=64, num_workers=0):
            raise_read_errors(errors)
            for b, v in zip(blocks, model.pooled_blocks(x, blocks)[0], strict=True):
                pooled[b].append(torch.nn.functional.normalize(v, dim=1).numpy())
    feats = {b: np.concatenate(v) for b, v in pooled.items()}
    return {name: np.concatenate([feats[b] for b in name.split("+")], axis=1) for name in names}


def score_variant(data, x: np.ndarray, args, seeds_label: str) -> dict:
    """Test macro-AUC of the probe on random labelled subsets (mean, sd over seeds) and on all labels."""
    from active.engine.simulate import _score
    from models.probe import fit_probe

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
    print(f"{seeds_label} (dim {x.shape[1]}): "
          + "  ".join(f"{n} {np.mean(v):.4f}±{np.std(v):.4f}" for n, v in per.items()), flush=True)
    return {"images": len(x), "dim": int(x.shape[1]),
            "macro_auc": {n: [float(np.mean(v)), float(np.std(v))] for n, v in per.items()}}


if __name__ == "__main__":
    main()
