"""All-label fine-tune of a benchmark project (backbone + head from its SSL checkpoint, the simulation's
small-budget recipe: at most 5 epochs, early stopping on a labelled validation part, class-weighted,
dropout 0.3), scored on the test split: does fine-tuning reach what the linear probe misses?

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_all_label_finetune.py bench/results/radiography2-e10/project
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("project", type=Path)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from active.engine.simulate import (
        _score,
        finetune_outputs,
        finetune_recipe,
        load_simulation_data,
    )
    from store.project import open_project

    project = open_project(args.project)
    out = args.out or args.project.parent / "all_label_finetune"
    out.mkdir(parents=True, exist_ok=True)
    data = load_simulation_data(project)
    started = time.perf_counter()
    outputs = finetune_outputs(finetune_recipe(project, epochs=args.epochs), out)(
        data, np.ones(len(data.pool_x), dtype=bool), 0)
    score = {**_score(data, outputs.test_probs), "seconds": time.perf_counter() - started}
    (out / "all_label_finetune.json").write_text(json.dumps(score, indent=2))
    print(json.dumps(score))


if __name__ == "__main__":
    main()
