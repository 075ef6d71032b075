"""`cxr-al`: the command line. Every command has --help; user errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from store.errors import CxrAlError

EXIT_USER_ERROR = 2


@contextmanager
def progress_bar(desc: str, total: int | None = None, unit: str = "img"):
    """A tqdm bar on stderr (hidden when stderr is not a terminal); yields (advance, set_total)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, dynamic_ncols=True)

    def set_total(n: int) -> None:
        bar.total = n
        bar.refresh()

    try:
        yield bar.update, set_total
    finally:
        bar.close()


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ----------------------------------------------------------------------------- commands
def cmd_demo_data(args: argparse.Namespace) -> int:
    from store.phantoms import write_phantom_dataset

    if args.n < 4:
        raise CxrAlError("--n must be at least 4 (one image per class)")
    with progress_bar("phantoms", total=args.n) as (advance, _):
        out = write_phantom_dataset(args.out_dir, n=args.n, seed=args.seed, size=args.size, progress=advance)
    print(f"wrote {args.n} phantom radiographs to {out / 'images'}, masks to {out / 'masks'}, "
          f"labels to {out / 'labels.csv'}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from active.service import create_project

    project = create_project(args.project_dir, args.classes, image_size=args.image_size, backbone=args.backbone,
                             positive_class=args.positive_class)
    print(f"created project {project.root} with classes: {', '.join(project.classes)} "
          f"(positive class {project.config['positive_class']})")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from active.service import ingest, open_project

    project = open_project(args.project_dir)
    with progress_bar("ingest") as (advance, set_total):
        report = ingest(project, args.images_dir, labels_from=args.labels_from, labels_as=args.labels_as,
                        test_fraction=args.test_fraction, seed=args.seed, progress=advance, on_total=set_total)
    if args.json:
        _print_json(report.as_dict())
        return 0
    print(f"added {report.added} images ({report.test} to the test split), "
          f"{report.already_known} already in the project, {len(report.duplicates)} duplicates, "
          f"{len(report.skipped)} skipped")
    if report.labeled:
        kind = "ground-truth (oracle)" if args.labels_as == "oracle" else "imported"
        per_class = ", ".join(f"{k} {v}" for k, v in report.per_class.items())
        print(f"{report.labeled} {kind} labels: {per_class}")
    if report.labels_without_image:
        print(f"{report.labels_without_image} labels name files that were not ingested")
    for path, reason in report.skipped[:50]:
        print(f"  skipped {path}: {reason}")
    if len(report.skipped) > 50:
        print(f"  ... and {len(report.skipped) - 50} more (see `cxr-al status`)")
    for path, original in report.duplicates[:20]:
        print(f"  duplicate {path} (same content as {original})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from active.service import open_project, status

    info = status(open_project(args.project_dir))
    if args.json:
        _print_json(info)
        return 0
    imgs = info["images"]
    print(f"project {info['project']['name']}: {imgs['total']} images ({imgs['pool']} pool, {imgs['test']} test), "
          f"{info['skipped']} files skipped")
    print(f"labeled images: {info['labels']} ({info['label_records']} labels"
          f"{', ' + str(info['oracle_labels']) + ' hidden ground-truth labels' if info['oracle_labels'] else ''})")
    for cls in info["project"]["classes"]:
        print(f"  {cls:<20} {info['labels_per_class'].get(cls, 0)}")
    if info["labels_per_annotator"]:
        print("annotators: " + ", ".join(f"{a} ({n})" for a, n in info["labels_per_annotator"].items()))
    print(f"open suggestions: {info['queue']}")
    for r in info["rounds"]:
        metrics = r.get("metrics") or {}
        shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("macro_auc", "accuracy", "hm")
                          if isinstance(metrics.get(k), int | float))
        print(f"round {r['id']} {r['kind']} {r['status']} ({r['n_labels']} labels) {shown} {r.get('error') or ''}")
    for extra in ("embeddings", "index"):
        if extra in info:
            print(f"{extra}: {info[extra]}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from active.service import open_project, record_label

    project = open_project(args.project_dir)
    label_id = record_label(project, args.image_id, args.label, args.annotator, seconds_spent=args.seconds)
    print(f"label {label_id}: image {args.image_id} = {project.canonical_class(args.label)} by {args.annotator}")
    return 0


def cmd_undo(args: argparse.Namespace) -> int:
    from active.service import open_project, undo_label

    undone = undo_label(open_project(args.project_dir), args.annotator)
    if undone is None:
        print(f"{args.annotator} has no label to undo")
        return 1
    print(f"withdrew label {undone['label_id']} (image {undone['image_id']} = {undone['label']})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from active.service import export, open_project

    classes = [c for c in args.classes.split(",") if c.strip()] if args.classes else None
    path, n = export(open_project(args.project_dir), args.out, args.format, split=args.split, classes=classes,
                     annotator=args.annotator, agreement=args.agreement, link=args.link, overwrite=args.overwrite)
    print(f"exported {n} labeled images to {path} ({args.format})")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-al", description="Annotation-efficient active learning for chest X-rays.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("demo-data", cmd_demo_data, "Generate synthetic chest-radiograph phantoms with lesion masks.")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--n", type=int, default=400, help="number of images (default 400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")

    p = add("init", cmd_init, "Create a labeling project (database and project.yaml).")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("--classes", required=True, help='comma-separated, in button order, e.g. "COVID-19,Normal"')
    p.add_argument("--image-size", type=int, default=224, help="model input size in pixels (default 224)")
    p.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet50", "densenet121"])
    p.add_argument("--positive-class", default=None, help="class of interest for sensitivity/specificity/HM")

    p = add("ingest", cmd_ingest, "Add a folder of images (PNG, JPEG, BMP, TIFF, DICOM) to a project.")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("images_dir", type=Path, metavar="IMAGES_DIR")
    p.add_argument("--labels-from", default=None, metavar="folders|FILE.csv",
                   help="take labels from the first folder level or from a CSV (columns file,label)")
    p.add_argument("--as", dest="labels_as", choices=["oracle", "labels"], default="oracle",
                   help="store labels as hidden ground truth for simulation (oracle) or as real labels")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="stratified held-out test split among labeled images (default 0.2 with labels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add("status", cmd_status, "Show images, labels, annotators, rounds and skipped files.")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("--json", action="store_true")

    p = add("label", cmd_label, "Record one label (the same code path as the app).")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("image_id", type=int, metavar="IMAGE_ID")
    p.add_argument("label", metavar="LABEL")
    p.add_argument("--annotator", required=True)
    p.add_argument("--seconds", type=float, default=None, help="time spent on the image")

    p = add("undo", cmd_undo, "Withdraw an annotator's most recent label.")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("--annotator", required=True)

    p = add("export", cmd_export, "Export the labeled set with provenance.")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("out", type=Path, metavar="OUT")
    p.add_argument("--format", required=True, choices=["csv", "parquet", "jsonl", "imagefolder"])
    p.add_argument("--split", default="all", choices=["all", "pool", "test"])
    p.add_argument("--classes", default=None, help="only these classes (comma-separated)")
    p.add_argument("--annotator", default=None, help="only images this annotator labeled")
    p.add_argument("--agreement", default=None, choices=["single", "agree", "disagree"])
    p.add_argument("--link", action="store_true", help="imagefolder: hard-link instead of copying")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CxrAlError as exc:
        print(f"cxr-al: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("cxr-al: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
