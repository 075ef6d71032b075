"""GPU check: SSL pretraining, embedding, a fine-tuning round and FAISS search on phantoms, on the GPU (bf16 and
channels-last, the product's GPU defaults) beside the same steps on the CPU, as images (or queries) per second.

    bench/gpu_check.sh                      # on a machine with an NVIDIA GPU: 224 px, about 3 minutes
    GPU_CHECK_SMALL=1 bench/gpu_check.sh    # small sizes (64 px, a few steps): checks the script on a CPU box

Uses the product's own functions (models.ssl.pretrain, models.embed.embed_paths, models.finetune.finetune and
predict_outputs, store.index.EmbeddingIndex) on phantoms it draws itself; nothing is downloaded. Without a GPU
only the CPU column is filled. Prints a table; full numbers go to $GPU_CHECK_OUT/gpu_check.json
(default bench/results/).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Sizes:
    """How much work each step does on one device."""

    pretrain_images: int  # distinct paths in the SSL pool (phantoms repeat when there are fewer)
    pretrain_batch: int
    pretrain_steps: int
    embed_images: int
    finetune_images: int
    finetune_epochs: int
    finetune_batch: int
    faiss_vectors: int
    faiss_queries: int


IMAGE_SIZE = {"full": 224, "small": 64}
PHANTOMS = {"full": 1024, "small": 48}  # drawn once, shared by both devices
SIZES = {
    ("full", "cuda"): Sizes(4096, 256, 40, 4096, 2048, 2, 128, 200_000, 10_000),
    ("full", "cpu"): Sizes(256, 32, 3, 256, 128, 1, 32, 200_000, 500),
    ("small", "cuda"): Sizes(96, 16, 2, 96, 48, 1, 16, 20_000, 200),
    ("small", "cpu"): Sizes(96, 16, 2, 96, 48, 1, 16, 20_000, 200),
}


def _draw(args: tuple[Path, int, int, int]) -> None:
    from store.phantoms import write_phantom_dataset

    out, n, seed, size = args
    write_phantom_dataset(out, n=n, seed=seed, size=size)


def draw_phantoms(root: Path, n: int, size: int) -> tuple[list[str], list[str]]:
    """n phantoms at size px, drawn in parallel (one seed per worker); (paths, class names from their folders)."""
    workers = max(1, min(os.cpu_count() or 1, n // 16))
    chunks = [(root / f"part{k}", n // workers + (k < n % workers), k, size) for k in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_draw, chunks))
    paths = sorted(str(p) for p in root.rglob("images/*/*.png"))
    return paths, [Path(p).parent.name for p in paths]


def _repeat(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def run_device(device: str, mode: str, paths: list[str], labels: list[str], work: Path) -> dict:
    """Pretrain, embed, fine-tune, predict and FAISS-search on one device; seconds and throughputs."""
    import torch

    from models.augment import augment_preset
    from models.embed import embed_paths
    from models.finetune import finetune, predict_outputs
    from models.ssl import pretrain
    from store.project import DEFAULT_EMBEDDING

    sizes, size = SIZES[(mode, device)], IMAGE_SIZE[mode]
    out: dict = {"sizes": asdict(sizes)}

    pool = _repeat(paths, sizes.pretrain_images)
    result = pretrain(pool, work / f"ssl-{device}", method="simclr", epochs=1000, max_steps=sizes.pretrain_steps,
                      batch_size=sizes.pretrain_batch, image_size=size, device=device, progress=False,
                      augment=augment_preset("standard"))
    out["pretrain"] = {"images_per_second": result.images_per_second, "steps": result.steps,
                       "seconds": result.wall_seconds, "precision": result.extra["precision"],
                       "channels_last": device == "cuda", "loss": result.losses[-1]}

    embed_list = _repeat(paths, sizes.embed_images)
    start = time.perf_counter()
    vectors = embed_paths(result.checkpoint, embed_list, image_size=size, batch_size=256, device=device,
                          progress=False, embedding=DEFAULT_EMBEDDING)  # what new projects embed with
    seconds = time.perf_counter() - start
    out["embed"] = {"images_per_second": len(vectors) / seconds, "seconds": seconds}

    classes = sorted(set(labels))
    train_paths = _repeat(paths, sizes.finetune_images)
    train_y = [classes.index(c) for c in _repeat(labels, sizes.finetune_images)]
    start = time.perf_counter()
    tuned = finetune(train_paths, train_y, classes, work / f"ft-{device}", checkpoint=result.checkpoint,
                     image_size=size, epochs=sizes.finetune_epochs, batch_size=sizes.finetune_batch, device=device,
                     patience=0, progress=False)
    seconds = time.perf_counter() - start
    out["finetune"] = {"images_per_second": tuned.n_train * sizes.finetune_epochs / seconds, "seconds": seconds,
                       "n_train": tuned.n_train, "epochs": sizes.finetune_epochs,
                       "note": "whole call: setup, validation and checkpoint included"}

    start = time.perf_counter()
    predicted = predict_outputs(tuned.classifier, embed_list, size, batch_size=256, device=device)
    seconds = time.perf_counter() - start
    out["predict"] = {"images_per_second": len(predicted.probs) / seconds, "seconds": seconds}

    import faiss

    on_gpu = device == "cuda" and faiss.get_num_gpus() > 0
    if device == "cuda" and not on_gpu:
        out["faiss"] = {"note": "faiss sees no GPU (faiss.get_num_gpus() == 0)"}
    else:
        try:  # a FAISS build without kernels for this GPU fails here: report it, keep the other numbers
            out["faiss"] = time_faiss(sizes, vectors.shape[1], on_gpu)
        except Exception as exc:  # noqa: BLE001
            out["faiss"] = {"error": f"{type(exc).__name__}: {exc}"}
    if device == "cuda":
        out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def time_faiss(sizes: Sizes, dim: int, on_gpu: bool) -> dict:
    """Build the product's index over random unit vectors (IVF from 100k on) and time top-10 searches."""
    from store.index import EmbeddingIndex

    rng = np.random.default_rng(0)
    base = rng.normal(size=(sizes.faiss_vectors, dim)).astype(np.float32)
    start = time.perf_counter()
    index = EmbeddingIndex.build(np.arange(len(base)), base, "gpu-check", use_gpu=on_gpu)
    build = time.perf_counter() - start
    queries = base[rng.choice(len(base), sizes.faiss_queries, replace=False)]
    start = time.perf_counter()
    index.search(queries, 10)
    seconds = time.perf_counter() - start
    return {"queries_per_second": sizes.faiss_queries / seconds, "build_seconds": build, "kind": index.kind,
            "on_gpu": index.on_gpu, "vectors": len(base)}


ROWS = (("pretrain", "images_per_second", "SSL pretrain (SimCLR), img/s"),
        ("embed", "images_per_second", "embed, img/s"),
        ("finetune", "images_per_second", "fine-tune round, img/s"),
        ("predict", "images_per_second", "predict, img/s"),
        ("faiss", "queries_per_second", "FAISS top-10 search, queries/s"))


def _cell(results: dict, device: str, step: str, key: str) -> str:
    value = results.get(device, {}).get(step, {}).get(key)
    return f"{value:12.1f}" if value else f"{'-':>12}"


def main() -> int:
    t0 = time.perf_counter()
    mode = "small" if os.environ.get("GPU_CHECK_SMALL") == "1" else "full"
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    results: dict = {}
    try:
        # drawn before torch starts CUDA in this process: the drawing workers are forked from it
        paths, labels = draw_phantoms(work / "phantoms", PHANTOMS[mode], IMAGE_SIZE[mode])
        drawn = time.perf_counter() - t0
        import faiss
        import torch

        devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
        machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                   "faiss": faiss.__version__, "faiss_gpus": faiss.get_num_gpus(),
                   "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
        print(f"gpu check ({mode}): {machine['gpu'] or 'no CUDA GPU'}, {machine['cpus']} CPUs, torch "
              f"{machine['torch']}, faiss {machine['faiss']} ({machine['faiss_gpus']} GPU)", flush=True)
        print(f"  {len(paths)} phantoms at {IMAGE_SIZE[mode]} px in {drawn:.1f} s", flush=True)
        for device in devices:
            start = time.perf_counter()
            results[device] = run_device(device, mode, paths, labels, work)
            print(f"  {device}: done in {time.perf_counter() - start:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'':<34}{'cuda':>12}{'cpu':>12}{'speed-up':>10}")
    for step, key, label in ROWS:
        gpu, cpu = (results.get(d, {}).get(step, {}).get(key) for d in ("cuda", "cpu"))
        ratio = f"{gpu / cpu:9.1f}x" if gpu and cpu else f"{'-':>10}"
        print(f"{label:<34}{_cell(results, 'cuda', step, key)}{_cell(results, 'cpu', step, key)}{ratio}")
    if "cuda" in results:
        print(f"GPU settings: precision {results['cuda']['pretrain']['precision']}, channels-last "
              f"{results['cuda']['pretrain']['channels_last']}, FAISS on GPU "
              f"{results['cuda']['faiss'].get('on_gpu', False)}, peak GPU memory "
              f"{results['cuda']['max_memory_gib']:.1f} GiB")
    total = time.perf_counter() - t0
    print(f"total {total:.0f} s")

    out_dir = Path(os.environ.get("GPU_CHECK_OUT") or REPO / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps({"mode": mode, "machine": machine, "seconds": total,
                                                        "results": results}, indent=2, default=float))
    print(f"full numbers: {out_dir / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
