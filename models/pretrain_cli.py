"""SSL pretraining of image files outside a project, on one device or on several GPUs and nodes.

`python -m models.pretrain_cli IMAGES --out DIR`. Every process a launcher starts (torchrun, SLURM's srun, or
Lightning itself for `--devices N`) runs this same command; global rank 0 writes DIR/backbone.pt, which
`cxr-al embed PROJECT --checkpoint DIR/backbone.pt` then uses. It never touches a project database, so no two
ranks record anything twice. docs/multi_gpu.md has the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from store.errors import CxrAlError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}


def image_paths(source: Path) -> list[str]:
    """Image files below a folder (by suffix, hidden ones left out), or the lines of a text file listing paths;
    sorted, so every process of a distributed run sees the same list in the same order."""
    if source.is_dir():
        found = [p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                 and not any(part.startswith(".") for part in p.relative_to(source).parts)]
    elif source.is_file():
        found = [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
    else:
        raise CxrAlError(f"{source}: no such folder or list file")
    return sorted(str(p) for p in found)


def _devices(text: str) -> int | str | list[int]:
    """--devices: a count ('4'), GPU indices ('0,2'), or 'auto'."""
    if text == "auto":
        return text
    if "," in text:
        return [int(i) for i in text.split(",") if i]
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    from models.augment import AUGMENT_PRESETS, DEFAULT_PRESET, SSL_METHODS
    from models.backbones import BACKBONES
    from models.runtime import PRECISIONS

    p = argparse.ArgumentParser(prog="python -m models.pretrain_cli", description=__doc__.splitlines()[0])
    p.add_argument("images", type=Path, metavar="IMAGES_DIR|LIST.txt")
    p.add_argument("--out", type=Path, required=True, help="folder for backbone.pt, loss.csv and lightning/")
    p.add_argument("--method", default="simclr", choices=list(SSL_METHODS))
    p.add_argument("--backbone", default="resnet18", choices=list(BACKBONES))
    p.add_argument("--init", default="random", help="random | imagenet (cached weights) | PATH to weights")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64, help="per process; the global batch is this x processes")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--lr", type=float, default=None, help="default: the method's rate scaled to the global batch")
    p.add_argument("--augment", default=DEFAULT_PRESET, choices=list(AUGMENT_PRESETS))
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--devices", type=_devices, default=None,
                   help="processes per node: a count, GPU indices like 0,1, or auto (default: one device)")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--strategy", default="auto", help="Lightning strategy: auto (ddp with several devices), ddp, "
                                                      "ddp_spawn ...")
    p.add_argument("--precision", default=None, choices=list(PRECISIONS),
                   help="default: bf16-mixed on a GPU with bf16, 32-true on the CPU")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers per process")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/lightning/last.ckpt")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from models.augment import augment_preset
        from models.ssl import pretrain

        paths = image_paths(args.images)
        result = pretrain(paths, args.out, method=args.method, backbone=args.backbone, init=args.init,
                          epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size, lr=args.lr,
                          device=args.device, devices=args.devices, num_nodes=args.num_nodes,
                          strategy=args.strategy, precision=args.precision, resume=args.resume, seed=args.seed,
                          num_workers=args.num_workers, augment=augment_preset(args.augment),
                          progress=not args.no_progress, max_steps=args.max_steps)
    except CxrAlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.extra.get("global_rank", 0) == 0:
        print(json.dumps({"checkpoint": str(result.checkpoint), "images": len(paths), "losses": result.losses,
                          "steps": result.steps, "images_per_second": round(result.images_per_second, 2),
                          "world_size": result.extra.get("world_size"), "device": result.device,
                          "precision": result.extra.get("precision")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
