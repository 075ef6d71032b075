"""Benchmark on real chest X-rays (../shared/data): SSL pretraining, embedding, an all-label probe with
test metrics and CIs, throughputs, and the oracle simulation of every query strategy.

    .venv/bin/python bench/bench_real_data.py --dataset cxr4 --epochs 2 --image-size 128

Prints a short table; full numbers go to bench/results/<dataset>/ (bench.json, curves.csv, summary.csv,
curves.png). The dataset's project (embeddings included) is kept there, so a second run reuses them.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    import os

    return f"{platform.machine()} {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cxr4", choices=["cxr4", "radiography2"])
    parser.add_argument("--epochs", type=int, default=2, help="SimCLR epochs")
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--init", default="random", help="random | imagenet | PATH (pretraining init)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--augment", default="gentle", help="SSL view settings: gentle | standard")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pretrain-seed", type=int, default=0, help="seed of the SSL pretraining")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--initial", type=int, default=20)
    parser.add_argument("--step", type=int, default=20)
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--strategies", default="random,entropy,margin,least-confidence,coreset,typiclust,probcover,badge,hybrid")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from active.engine.rounds import embed, latest_round, pretrain
    from active.engine.simulate import simulate
    from store.ingest import ingest_folder
    from store.project import CONFIG_NAME, init_project, open_project

    source = DATA / args.dataset
    if not source.is_dir():
        raise SystemExit(f"{source} not found: the real-data benchmark needs ../shared/data")
    out = args.out or REPO / "bench" / "results" / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"dataset": args.dataset, "machine": machine(), "args": vars(args) | {"out": str(out)}}
    project_dir = out / "project"
    if (project_dir / CONFIG_NAME).exists():
        project = open_project(project_dir)
    else:
        classes = sorted(p.name for p in source.iterdir() if p.is_dir())
        project = init_project(project_dir, classes, image_size=args.image_size, name=args.dataset)
        t0 = time.perf_counter()
        rep = ingest_folder(project.db, source, project.classes, labels_from="folders", labels_as="oracle",
                            test_fraction=0.2, seed=0)
        report["ingest"] = {"added": rep.added, "test": rep.test, "seconds": time.perf_counter() - t0,
                            "duplicates": len(rep.duplicates), "skipped": len(rep.skipped)}
    if latest_round(project, "pretrain") is None:
        pretrain(project, method=args.method, init=args.init, epochs=args.epochs, batch_size=args.batch_size,
                 image_size=args.image_size, seed=args.pretrain_seed, augment=args.augment)
    pre = latest_round(project, "pretrain")
    report["pretrain"] = {k: pre["metrics"].get(k) for k in ("images_per_second", "final_loss", "seconds", "device")}
    # a reused project keeps its own pretraining: report what it was, not what the flags say now
    report["pretrain"] |= {k: pre["params"].get(k, "standard" if k == "augment" else None)
                           for k in ("method", "epochs", "image_size", "augment")}
    if report["pretrain"]["augment"] != args.augment:
        print(f"note: reusing {project_dir}, pretrained with --augment {report['pretrain']['augment']}, "
              f"not {args.augment}")
    emb_round = project.db.rounds("embed")
    if emb_round.empty:
        embed(project)
        emb_round = project.db.rounds("embed")
    report["embed"] = emb_round.iloc[-1]["metrics"]  # ProjectDB.rounds decodes it

    # all-label probe: a logistic regression on the SSL embeddings of every training image, test metrics with CIs
    from active.engine.simulate import load_simulation_data
    from models.metrics import classification_metrics
    from models.probe import fit_probe

    data = load_simulation_data(project)
    t0 = time.perf_counter()
    probe = fit_probe(data.pool_x, data.pool_y, n_classes=len(data.classes), seed=0)
    metrics = classification_metrics(data.test_y, probe.predict_proba(data.test_x), data.classes,
                                     positive_class=data.positive_class, n_bootstrap=1000, seed=0)
    report["probe"] = {"fit_seconds": time.perf_counter() - t0, **metrics}
    t0 = time.perf_counter()
    sim = simulate(project, out, strategies=args.strategies.split(","), seeds=args.seeds, initial=args.initial,
                   step=args.step, budget=args.budget, progress=None, record=True)
    report["simulation_seconds"] = time.perf_counter() - t0
    report["full_label"] = sim["full_label"]
    report["pool"], report["test"] = sim["pool"], sim["test"]
    report["summary"] = sim["summary"]
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"{args.dataset}: pool {sim['pool']}, test {sim['test']}; machine {report['machine']}")
    print(f"pretrain {args.method} {args.epochs} ep @ {args.image_size}px: "
          f"{report['pretrain']['images_per_second']:.1f} img/s; embed {report['embed'].get('images_per_second', 0):.1f} img/s")
    m = report["probe"]
    print("all-label probe: " + ", ".join(
        f"{k} {m[k]:.3f} [{m['ci'][k][0]:.3f}, {m['ci'][k][1]:.3f}]" for k in ("accuracy", "balanced_accuracy",
                                                                             "macro_auc", "macro_f1", "hm")
        if m.get(k) is not None) + f", ece {m['ece']:.3f} (positive class {m['positive_class']})")
    print("per-class recall: " + ", ".join(f"{c} {v['sensitivity']:.3f}" for c, v in m["per_class"].items()))
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(pd.DataFrame(sim["summary"]).to_string(index=False))


if __name__ == "__main__":
    main()
