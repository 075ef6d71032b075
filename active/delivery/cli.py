"""`cxr-al`: the command line. Every command has --help; user errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from store.errors import CxrAlError

if TYPE_CHECKING:
    from store.ingest import IngestReport

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


@contextmanager
def job_output_on_stderr() -> Iterator[TextIO]:
    """While a job runs, whatever it writes to stdout goes to stderr: Lightning's progress bar (which writes to
    stdout), a library's print, and the job's child process, which inherits the descriptor. So stdout carries only
    the command's results: printed after the job, or written to the stream this yields (the real stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with open(saved, "w", closefd=False) as results, redirect_stdout(sys.stderr):
            yield results
    finally:
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ----------------------------------------------------------------------------- commands
def cmd_demo_data(args: argparse.Namespace) -> int:
    from store.phantoms import write_phantom_dataset

    if args.n < 4:
        raise CxrAlError("--n must be at least 4 (one image per class)")
    try:
        with progress_bar("phantoms", total=args.n) as (advance, _):
            out = write_phantom_dataset(args.out_dir, n=args.n, seed=args.seed, size=args.size, progress=advance,
                                        lesion_strength=tuple(args.lesion_strength))
    except ValueError as exc:
        raise CxrAlError(str(exc)) from exc
    print(f"wrote {args.n} phantom radiographs to {out / 'images'}, masks to {out / 'masks'}, "
          f"labels to {out / 'labels.csv'}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from active.engine.project import create_project
    from store.project import DEFAULT_EMBEDDING

    project = create_project(args.project_dir, args.classes, image_size=args.image_size, backbone=args.backbone,
                             positive_class=args.positive_class, embedding=args.embedding or DEFAULT_EMBEDDING)
    print(f"created project {project.root} with classes: {', '.join(project.classes)} "
          f"(positive class {project.config['positive_class']})")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from active.engine.project import ingest, open_project

    if args.dicomweb is not None:
        return _ingest_dicomweb(args)
    if args.images_dir is None:
        raise CxrAlError("give IMAGES_DIR or --dicomweb URL (a PACS's DICOMweb service) to ingest from")
    given = [o for o, v in [("--study", args.study), ("--since", args.since), ("--modality", args.modality),
                            ("--dicomweb-user", args.dicomweb_user),
                            ("--dicomweb-password-stdin", args.dicomweb_password_stdin)] if v]
    if given:
        raise CxrAlError(f"{', '.join(given)}: only with --dicomweb URL")
    project = open_project(args.project_dir)
    with progress_bar("ingest") as (advance, set_total):
        report = ingest(project, args.images_dir, labels_from=args.labels_from, labels_as=args.labels_as,
                        test_fraction=args.test_fraction, seed=args.seed, progress=advance, on_total=set_total,
                        follow_links=args.follow_links, groups_from=args.groups_from)
    if args.json:
        _print_json(report.as_dict())
        return 0
    _print_ingest_report(report, args.labels_as)
    return 0


def _ingest_dicomweb(args: argparse.Namespace) -> int:
    """`ingest PROJECT --dicomweb URL`: fetch the new instances of a PACS into the project and ingest them."""
    from active.engine.project import open_project
    from store.dicomweb import DEFAULT_MODALITIES, PASSWORD_ENV, ingest_dicomweb

    if args.images_dir is not None:
        raise CxrAlError("give IMAGES_DIR or --dicomweb URL, not both")
    folder_only = [o for o, v in [("--labels-from", args.labels_from), ("--test-fraction", args.test_fraction),
                                  ("--follow-links", args.follow_links),
                                  ("--groups-from", args.groups_from)] if v]
    if folder_only:
        raise CxrAlError(f"{', '.join(folder_only)}: only with IMAGES_DIR (a PACS ingest brings images without labels)")
    password = None
    if args.dicomweb_user is not None:
        password = sys.stdin.readline().rstrip("\r\n") if args.dicomweb_password_stdin else os.environ.get(PASSWORD_ENV)
    modalities = DEFAULT_MODALITIES if args.modality is None else (
        None if args.modality.strip().lower() == "any" else [m.strip() for m in args.modality.split(",") if m.strip()])
    project = open_project(args.project_dir)
    with progress_bar("fetch") as (fetched, set_fetch_total), progress_bar("ingest") as (advance, set_total):
        report = ingest_dicomweb(project.db, project.root, args.dicomweb, project.classes, studies=args.study or (),
                                 since=args.since, modalities=modalities, user=args.dicomweb_user, password=password,
                                 fetch_progress=fetched, on_fetch_total=set_fetch_total, progress=advance,
                                 on_total=set_total)
    if args.json:
        _print_json(report.as_dict())
        return 0
    print(f"fetched {report.fetched} instances from {report.url} ({report.studies} studies, {report.found} "
          f"instances found, {report.already_here} already in the project, {report.other_modality} of other "
          f"modalities left on the server, {len(report.refused)} refused)")
    for uid in report.studies_not_found:
        print(f"  study {uid} not found on the server")
    for what, reason in report.refused[:50]:
        print(f"  refused {what}: {reason}")
    if report.ingest is not None:
        _print_ingest_report(report.ingest, "oracle")
    return 0


def _print_ingest_report(report: IngestReport, labels_as: str) -> None:
    print(f"added {report.added} images ({report.test} to the test split), "
          f"{report.already_known} already in the project, {len(report.duplicates)} duplicates, "
          f"{len(report.skipped)} skipped")
    if report.labeled:
        kind = "ground-truth (oracle)" if labels_as == "oracle" else "imported"
        per_class = ", ".join(f"{k} {v}" for k, v in report.per_class.items())
        print(f"{report.labeled} {kind} labels: {per_class}")
    if report.patients:
        ungrouped = f", {report.without_group} images with neither" if report.without_group else ""
        print(f"{len(report.patients)} patients (the test split keeps each patient whole){ungrouped}")
    if report.labels_without_image:
        print(f"{report.labels_without_image} labels name files that were not ingested")
    for path, reason in report.skipped[:50]:
        print(f"  skipped {path}: {reason}")
    if len(report.skipped) > 50:
        print(f"  ... and {len(report.skipped) - 50} more (see `cxr-al status`)")
    for path, original in report.duplicates[:20]:
        print(f"  duplicate {path} (same content as {original})")
    for path, warning in report.warnings[:50]:
        print(f"  warning {path}: {warning}")
    if len(report.warnings) > 50:
        print(f"  ... and {len(report.warnings) - 50} more warnings (see --json)")


def cmd_status(args: argparse.Namespace) -> int:
    from active.engine.project import open_project
    from active.views.status import status

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
    groups = info["grouping"]
    if groups["patients"] or groups["studies"]:
        print(f"patients: {groups['patients']} ({groups['pool_patients']} pool, {groups['test_patients']} test), "
              f"studies: {groups['studies']}, images with neither: {groups['images_without_group']}")
        leaked = groups["patients_in_both"] + groups["studies_in_both"]
        print(f"leakage: {leaked} patients or studies in both splits" + (" (see `cxr-al leakage`)" if leaked else ""))
    if groups["test_split_labels"]:
        print(f"test-split labels: {groups['test_split_labels']} (given on request; test metrics use the held-out "
              "ground truth)")
    print(f"open suggestions: {info['queue']}")
    for r in info["rounds"]:
        print(_round_line(r))
    print(f"embeddings: {info['embeddings']}")
    index = info.get("index")
    if index:
        print(f"FAISS index: {index['type']}, {index['size']} vectors of {index['dim']} dimensions")
    print(f"round due: {'yes' if info['round_due'] else 'no'}")
    overall = info["efficiency"]["overall"]
    print(f"is active learning paying off: {overall['sentence']}")
    parts = [f"{name} {_estimate(overall[part], 'accuracy')}" for part, name in
             (("random", "random share"), ("active", "active picks")) if overall[part]["accuracy"] is not None]
    if parts:
        print("  prequential accuracy: " + "; ".join(parts))
    return 0


def cmd_leakage(args: argparse.Namespace) -> int:
    from active.engine.project import open_project
    from active.views.leakage import leakage

    info = leakage(open_project(args.project_dir), threshold=args.threshold)
    if args.json:
        _print_json(info)
        return 1 if info["found"] else 0
    groups, duplicates = info["grouping"], info["near_duplicates"]
    print(f"patients: {groups['patients']} ({groups['pool_patients']} pool, {groups['test_patients']} test), "
          f"studies: {groups['studies']}, images with neither a patient nor a study: {groups['images_without_group']}")
    print(f"patients or studies in both splits: {len(info['groups_in_both'])}")
    for g in info["groups_in_both"]:
        print(f"  {g['kind']} {g['key']}: pool images {', '.join(map(str, g['pool']))}; "
              f"test images {', '.join(map(str, g['test']))}")
    if not duplicates["checked"]:
        print(f"near-duplicates across the splits: not checked ({duplicates['why_not']})")
    else:
        print(f"near-duplicate pool/test pairs (centred cosine > {duplicates['threshold']}): {duplicates['count']}"
              + (f" ({duplicates['not_embedded']} images not embedded yet, not compared)"
                 if duplicates["not_embedded"] else ""))
        for pair in duplicates["pairs"][:50]:
            print(f"  pool {pair['pool_id']} ~ test {pair['test_id']}: {pair['similarity']:.4f}")
        if duplicates["count"] > 50:
            print(f"  ... and {duplicates['count'] - 50} more (see --json)")
    return 1 if info["found"] else 0


def _round_line(r: dict[str, Any]) -> str:
    """One round of `status` as text: its kind, state and the numbers that matter for that kind."""
    from models.metrics import CI_METRICS

    metrics = r.get("metrics") or {}
    head = f"round {r['id']} {r['kind']} {r['status']}"
    if r["kind"] == "train":
        mode = f"{metrics['mode']}, " if metrics.get("mode") else ""
        head += f" ({mode}{metrics.get('n_train', r['n_labels'])} labels)"  # trained on, as `train` says
        shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in CI_METRICS if isinstance(metrics.get(k), int | float))
    elif r["kind"] == "pretrain" and isinstance(metrics.get("final_loss"), int | float):
        shown = f"{_count(len(metrics.get('losses') or []), 'epoch')}, final loss {metrics['final_loss']:.4f}"
    elif r["kind"] == "embed" and isinstance(metrics.get("embedded"), int):
        shown = f"{metrics['embedded']} images embedded"
    else:
        shown = ""
    error = f" error: {r['error']}" if r.get("error") else ""
    return f"{head}{': ' + shown if shown else ''}{error}"


def _count(n: int, noun: str) -> str:
    """`1 epoch`, `2 epochs`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _estimate(part: dict[str, Any], key: str) -> str:
    """`accuracy 0.812 [0.700, 0.900] (n=16)`: an estimate of `efficiency` with its CI, as text."""
    ci = part.get(f"{key}_ci")
    return f"{key} {part[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + f" (n={part['n']})"


def cmd_label(args: argparse.Namespace) -> int:
    from active.engine.labeling import record_label
    from active.engine.project import open_project

    project = open_project(args.project_dir)
    label_id = record_label(project, args.image_id, args.label, args.annotator, seconds_spent=args.seconds,
                            test_split=args.test_split)
    if args.test_split and project.db.image(args.image_id)["split"] == "test":
        print(f"image {args.image_id} is a test-split image: its label is kept apart (source 'test-split'); "
              "test metrics still use its held-out ground truth")
    print(f"label {label_id}: image {args.image_id} = {project.canonical_class(args.label)} by {args.annotator}")
    if not args.no_auto_train:
        from active.engine.policy import start_round_if_due

        pid = start_round_if_due(project)
        if pid is not None:
            print(f"the round policy fired: training round started in the background (pid {pid}; "
                  f"log in {project.artifacts / 'rounds' / 'background.log'})")
    return 0


def cmd_undo(args: argparse.Namespace) -> int:
    from active.engine.labeling import undo_label
    from active.engine.project import open_project

    undone = undo_label(open_project(args.project_dir), args.annotator)
    if undone is None:
        print(f"{args.annotator} has no label to undo")
        return 1
    print(f"withdrew label {undone['label_id']} (image {undone['image_id']} = {undone['label']})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from active.engine.project import open_project
    from active.views.export import export

    classes = [c for c in args.classes.split(",") if c.strip()] if args.classes else None
    if args.link:
        print("cxr-al: warning: --link: the linked files are the originals, with their embedded metadata (PNG text, "
              "EXIF, comments); keep this folder inside the project's trust boundary", file=sys.stderr)
    path, n = export(open_project(args.project_dir), args.out, args.format, split=args.split, classes=classes,
                     annotator=args.annotator, agreement=args.agreement, paths=args.source_paths,
                     keep_uids=args.keep_uids, link=args.link, overwrite=args.overwrite)
    print(f"exported {n} labeled images to {path} ({args.format})")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from active.engine.project import open_project
    from active.engine.rounds import pretrain

    with job_output_on_stderr():
        result = pretrain(open_project(args.project_dir), method=args.method, backbone=args.backbone,
                          init=args.init, epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size,
                          device=args.device, resume=args.resume, seed=args.seed, max_steps=args.max_steps,
                          allow_download=args.download_weights, augment=args.augment)
    losses = result["losses"]
    print(f"pretrained {args.method} round {result['round_id']}: {_count(len(losses), 'epoch')}, final loss "
          f"{losses[-1]:.4f}, {result['images_per_second']:.1f} images/s on {result['device']}; "
          f"checkpoint {result['checkpoint']}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from active.engine.project import open_project
    from active.engine.rounds import embed

    with job_output_on_stderr():
        result = embed(open_project(args.project_dir), checkpoint=args.checkpoint, init=args.init,
                       batch_size=args.batch_size, device=args.device, allow_download=args.download_weights)
    print(f"embedded {result.get('count', 0)} new images; index: {result.get('index', 'rebuilt')}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from active.engine.policy import run_round
    from active.engine.project import open_project
    from models.metrics import CI_METRICS

    project = open_project(args.project_dir)
    with job_output_on_stderr():
        outcome = run_round(project, mode=args.mode, epochs=args.epochs, device=args.device, seed=args.seed,
                            if_due=args.if_due, refresh=not args.keep_queue)
    if not outcome.started:
        print(outcome.message)
        return 0
    m = outcome.metrics
    shown = ", ".join(f"{k} {m[k]:.3f}" for k in (*CI_METRICS, "ece") if isinstance(m.get(k), int | float))
    print(f"round {outcome.round_id} ({args.mode or project.round_policy['mode']}, {m['n_train']} labels): "
          f"{shown or 'no test split to score'}")
    if not args.keep_queue:
        print(f"queued {outcome.queued} new suggestions scored by round {outcome.round_id}")
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    from active.engine.labeling import validate_annotator
    from active.engine.project import open_project
    from active.engine.queue import suggest

    annotator = validate_annotator(args.annotator) if args.annotator else None
    added = suggest(open_project(args.project_dir), args.n, strategy=args.strategy, annotator=annotator,
                    seed=args.seed)
    print(f"queued {len(added)} images" + (f" for {annotator}" if annotator else ""))
    for row in added.itertuples(index=False):
        print(f"  image {row.image_id}  {row.strategy}  score {row.score:.4f}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from active.engine.simulate import (
        DEFAULT_STRATEGIES,
        finetune_recipe,
        project_for_simulation,
        simulate,
    )

    with job_output_on_stderr():
        project = project_for_simulation(args.source, Path(args.out), checkpoint=args.checkpoint, init=args.init,
                                         pretrain_epochs=args.pretrain_epochs, test_fraction=args.test_fraction,
                                         image_size=args.image_size, seed=args.seed)
    strategies = [s.strip() for s in (args.strategies or ",".join(DEFAULT_STRATEGIES)).split(",") if s.strip()]
    recipe = None
    if args.mode == "finetune":  # one fine-tuning per point of every curve: say what it starts from
        recipe = finetune_recipe(project, checkpoint=args.checkpoint, init=args.init, epochs=args.epochs,
                                 batch_size=args.batch_size, device=args.device)
        print(f"fine-tuning {recipe.backbone} from {recipe.checkpoint or recipe.init} at {recipe.image_size} px, "
              f"up to {_count(recipe.epochs, 'epoch')} per point", file=sys.stderr)
    with job_output_on_stderr(), progress_bar("simulate", unit="fit") as (advance, _):
        result = simulate(project, args.out, strategies=strategies, seeds=args.seeds, initial=args.initial,
                          step=args.step, budget=args.budget, mode=args.mode, metric=args.metric,
                          progress=lambda point: advance(1), recipe=recipe)
    print(f"pool {result['pool']}, test {result['test']}; all-label {args.metric} "
          f"{result['full_label'][args.metric]:.4f}; {result['seconds']:.0f} s")
    import pandas as pd

    summary = pd.DataFrame(result["summary"])
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(summary.to_string(index=False))
    print(f"wrote {Path(args.out) / 'curves.csv'}, curves.png, summary.csv")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from active.delivery.demo import run_demo
    from active.delivery.serve import check_exposure, tls_files

    tls = None
    if not args.no_serve:  # refuse a bad certificate or an exposed plain-HTTP address before the long preparation
        tls = tls_files(args.tls_cert, args.tls_key)
        check_exposure(args.host, tls, args.insecure_http, warn=False)
    with job_output_on_stderr() as results:  # the demo's steps on stdout, its jobs' progress on stderr
        info = run_demo(args.dir, n=args.n, seed=args.seed, epochs=args.epochs,
                        log=lambda line: print(line, file=results, flush=True))
    if args.no_serve:
        return 0
    from active.delivery.serve import serve

    print(f"sign in as {info['account']['name']!r} with password {info['account']['password']!r} "
          f"({info['account']['role']})", flush=True)
    return serve(info["project_dir"], port=args.port, host=args.host, tls=tls, insecure_http=args.insecure_http)


def cmd_serve(args: argparse.Namespace) -> int:
    from active.delivery.serve import serve, tls_files

    return serve(args.project_dir, port=args.port, host=args.host, open_browser=args.open,
                 tls=tls_files(args.tls_cert, args.tls_key), insecure_http=args.insecure_http)


def add_exposure_options(p: argparse.ArgumentParser) -> None:
    """--tls-cert, --tls-key and --insecure-http of the commands that start the app server."""
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate: serve HTTPS (with --tls-key)")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--insecure-http", action="store_true",
                   help="allow plain HTTP on a non-loopback --host (session ids and passwords cross the network "
                        "in clear text)")


def cmd_user_add(args: argparse.Namespace) -> int:
    from active.engine.project import open_project
    from active.views.accounts import add_user, read_password

    project = open_project(args.project_dir)
    password = read_password(from_stdin=args.password_stdin)
    account = add_user(project, args.name, args.role, password, actor="cli")
    print(f"account {account['name']!r} saved with role {account['role']}")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    from active.engine.project import open_project
    from active.views.accounts import list_users

    users = list_users(open_project(args.project_dir))
    if args.json:
        _print_json(users.to_dict(orient="records"))
    elif users.empty:
        print("no accounts yet: add one with `cxr-al user add PROJECT_DIR NAME --role annotator|lead|admin`")
    else:
        print(users.to_string(index=False))
    return 0


def explain_outputs(out: Path, image_ids: list[int]) -> list[Path]:
    """Where each overlay goes: `out` itself for one image (or out/image-ID.png when out is a folder), else
    out/image-ID.png in the folder `out` (created when its parent exists). Checked before any model loads."""
    if len(image_ids) == 1 and not out.is_dir():
        if not out.parent.is_dir():
            raise CxrAlError(f"folder {out.parent} does not exist")
        return [out]
    if (out.exists() or out.suffix.lower() == ".png") and not out.is_dir():
        raise CxrAlError(f"--out {out} is a file; with several images give a folder")
    if not out.parent.is_dir():
        raise CxrAlError(f"folder {out.parent} does not exist")
    out.mkdir(exist_ok=True)
    return [out / f"image-{i}.png" for i in image_ids]


def cmd_explain(args: argparse.Namespace) -> int:
    from active.engine.project import open_project
    from active.views.explain import explain

    project = open_project(args.project_dir)
    image_ids = list(dict.fromkeys(args.image_ids))  # each image once, in the order given
    outputs = explain_outputs(args.out, image_ids)
    # one call: the round model is loaded once (active.views.explain caches it) and the images run in batches
    results = explain(project, image_ids, class_name=args.class_name, round_id=args.round)
    for result, path in zip(results, outputs, strict=True):
        path.write_bytes(result["overlay_png"])
        probs = ", ".join(f"{c} {p:.3f}" for c, p in result["probs"].items())
        print(f"Grad-CAM++ for image {result['image_id']}, class {result['class']} ({probs}): wrote {path}")
    return 0


# ----------------------------------------------------------------------------- parser
class RegistryChoices(Sequence[str]):
    """The names of a registry (a dict or tuple `attribute` of `module`), read when argparse first needs them, so
    building the parser imports no torch: a command pays for a registry only when its option is used or shown."""

    def __init__(self, module: str, attribute: str):
        self.module, self.attribute = module, attribute

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(getattr(importlib.import_module(self.module), self.attribute))

    def __getitem__(self, index):
        return self.names[index]

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"RegistryChoices({self.module}.{self.attribute})"


BACKBONE_CHOICES = RegistryChoices("models.backbones", "BACKBONES")
EMBEDDING_CHOICES = RegistryChoices("models.backbones", "EMBEDDINGS")
SSL_METHOD_CHOICES = RegistryChoices("models.augment", "SSL_METHODS")  # = models.ssl.MODULES, without importing it
AUGMENT_CHOICES = RegistryChoices("models.augment", "AUGMENT_PRESETS")
EXPORT_FORMAT_CHOICES = RegistryChoices("store.export", "FORMATS")
STRATEGY_CHOICES = RegistryChoices("active.strategies", "STRATEGIES")
METRIC_CHOICES = RegistryChoices("models.metrics", "CI_METRICS")
def cmd_user_disable(args: argparse.Namespace) -> int:
    from active.engine.project import open_project
    from active.views.accounts import set_disabled

    disable = args.user_command == "disable"
    set_disabled(open_project(args.project_dir), args.name, disable, actor="cli")
    print(f"account {args.name!r} {'disabled: its sessions have ended' if disable else 'enabled'}")
    return 0


def cmd_user_unlock(args: argparse.Namespace) -> int:
    from active.engine.project import open_project
    from active.views.accounts import unlock_user

    n = unlock_user(open_project(args.project_dir), args.name, actor="cli")
    print(f"{args.name!r} unlocked ({n} failed sign-ins forgotten)")
    return 0


def cmd_user_sign_out_all(args: argparse.Namespace) -> int:
    from active.engine.project import open_project
    from active.views.sessions import sign_out_all

    n = sign_out_all(open_project(args.project_dir), args.name, actor="cli")
    print(f"{n} session(s) ended{f' of {args.name!r}' if args.name else ''}; they are signed out on their next "
          "click and their claimed images are back in the queue")
    return 0


ROLE_CHOICES = RegistryChoices("active.views.accounts", "ROLES")
MODE_CHOICES = RegistryChoices("active.engine.jobs", "TRAIN_MODES")
# models.runtime.resolve_device has no registry of device names (it also takes cuda:N): the names offered here
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def _add_choice(parser: argparse.ArgumentParser, flag: str, choices: Sequence[str], metavar: str,
                help_text: str = "", **kwargs: Any) -> None:
    """An option whose values come from a registry; the help lists them (only when help is shown)."""
    listed = "one of: %(choices)s"
    parser.add_argument(flag, choices=choices, metavar=metavar,
                        help=f"{help_text} ({listed})" if help_text else listed, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The `cxr-al` parser; the choices of backbones, SSL methods, augmentations, export formats, strategies,
    metrics, roles and training modes come from their registries."""
    parser = argparse.ArgumentParser(
        prog="cxr-al", description="Annotation-efficient active learning for chest X-rays.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("demo", cmd_demo, "The main job: a demo project on phantom images, pretrained, embedded, with suggestions.")
    p.add_argument("--dir", type=Path, default=Path("demo"), help="where the demo data and project go (./demo)")
    p.add_argument("--n", type=int, default=240, help="number of phantom images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="SSL epochs (default 2 on a CPU, 30 on a GPU)")
    p.add_argument("--port", type=int, default=8501, help="port of the app (default 8501)")
    p.add_argument("--host", default="127.0.0.1", help="address the app listens on (default 127.0.0.1)")
    p.add_argument("--no-serve", action="store_true", help="prepare the project but do not start the app")
    add_exposure_options(p)

    p = add("serve", cmd_serve, "Run the labeling app (Streamlit) for a project in the browser.")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("--port", type=int, default=8501, help="default 8501")
    p.add_argument("--host", default="127.0.0.1",
                   help="default 127.0.0.1 (this machine only); 0.0.0.0 serves the network (needs TLS or "
                        "--insecure-http)")
    p.add_argument("--open", action="store_true", help="open the app in the default browser")
    add_exposure_options(p)

    p = sub.add_parser("user", help="Manage the accounts of a project.", description="Manage the accounts of a project.")
    users = p.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    up = users.add_parser("add", help="create an account or change its role and password",
                          description="Create an account or change its role and password (at least 8 characters).")
    up.set_defaults(func=cmd_user_add)
    up.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    up.add_argument("name", metavar="NAME")
    _add_choice(up, "--role", ROLE_CHOICES, "ROLE", required=True,
                help_text="annotators label; leads also see dashboards, train and export; admins manage accounts")
    up.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    up = users.add_parser("list", help="list the accounts", description="List the accounts of a project.")
    up.set_defaults(func=cmd_user_list)
    up.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    up.add_argument("--json", action="store_true")
    for action, func, text in (
            ("disable", cmd_user_disable, "disable an account: it cannot sign in and its sessions end at once"),
            ("enable", cmd_user_disable, "enable a disabled account again"),
            ("unlock", cmd_user_unlock, "unlock a name locked by failed sign-ins (forget its failures)")):
        up = users.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        up.set_defaults(func=func)
        up.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
        up.add_argument("name", metavar="NAME")
    up = users.add_parser("sign-out-all", help="end every sign-in session, or an account's",
                          description="End every sign-in session (or NAME's): each is signed out on its next click.")
    up.set_defaults(func=cmd_user_sign_out_all)
    up.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    up.add_argument("name", metavar="NAME", nargs="?", default=None)

    p = add("demo-data", cmd_demo_data, "Generate synthetic chest-radiograph phantoms with lesion masks.")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--n", type=int, default=400, help="number of images (default 400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--lesion-strength", type=float, nargs=2, default=[0.35, 1.0], metavar=("LOW", "HIGH"),
                   help="range each lesion's opacity is drawn from, 1 = reference (default 0.35 1.0: obvious to "
                        "subtle); e.g. 1.5 3 for easy data")

    p = add("init", cmd_init, "Create a labeling project (database and project.yaml).")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("--classes", required=True, help='comma-separated, in button order, e.g. "COVID-19,Normal"')
    p.add_argument("--image-size", type=int, default=224, help="model input size in pixels (default 224)")
    _add_choice(p, "--backbone", BACKBONE_CHOICES, "BACKBONE", default="resnet18", help_text="default resnet18")
    p.add_argument("--positive-class", default=None, help="class of interest for sensitivity/specificity/HM")
    _add_choice(p, "--embedding", EMBEDDING_CHOICES, "EMBEDDING", default=None,
                help_text="the backbone's pooled blocks that make an image's embedding; default multiscale (middle "
                          "and last blocks joined), last: the last block only")

    p = add("ingest", cmd_ingest, "Add a folder of images (PNG, JPEG, BMP, TIFF, DICOM), or the radiographs of a "
                                  "PACS over DICOMweb (--dicomweb), to a project.")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("images_dir", type=Path, metavar="IMAGES_DIR", nargs="?", default=None,
                   help="the folder to ingest (leave out with --dicomweb)")
    p.add_argument("--labels-from", default=None, metavar="folders|FILE.csv",
                   help="take labels from the first folder level or from a CSV (columns file,label)")
    p.add_argument("--as", dest="labels_as", choices=["oracle", "labels"], default="oracle",
                   help="store labels as hidden ground truth for simulation (oracle) or as real labels")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="stratified held-out test split among labeled images (default 0.2 with labels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--follow-links", action="store_true",
                   help="also ingest files that symbolic links lead to outside IMAGES_DIR (refused by default)")
    p.add_argument("--groups-from", default=None, metavar="FILE.csv",
                   help="patient (and study) of each image from a CSV: columns file (or path), patient_id (or "
                        "patient/subject), optional study_id (or study); default: DICOM PatientID and "
                        "StudyInstanceUID. The test split is then drawn by patient")
    p.add_argument("--dicomweb", default=None, metavar="URL",
                   help="fetch from a PACS's DICOMweb service root (QIDO-RS, WADO-RS), e.g. "
                        "http://pacs:8042/dicom-web; instances already in the project are not fetched again")
    p.add_argument("--study", action="append", default=None, metavar="UID",
                   help="--dicomweb: only this Study Instance UID (repeat for several)")
    p.add_argument("--since", default=None, metavar="YYYY-MM-DD", help="--dicomweb: only studies of this date or later")
    p.add_argument("--modality", default=None, metavar="M1,M2|any",
                   help="--dicomweb: modalities to fetch (default CR,DX: radiographs); any: all")
    p.add_argument("--dicomweb-user", default=None, metavar="NAME",
                   help="--dicomweb: HTTP basic-auth user; the password comes from $CXR_AL_DICOMWEB_PASSWORD")
    p.add_argument("--dicomweb-password-stdin", action="store_true",
                   help="--dicomweb-user: read the password from the first line of stdin instead")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add("status", cmd_status, "Show images, labels, annotators, rounds and skipped files.")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("--json", action="store_true")

    p = add("leakage", cmd_leakage, "Check the test split for leakage: patients or studies in both splits and, "
                                    "after `embed`, test images that are near-duplicates of pool images (exit 1 "
                                    "when there is any).")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("--threshold", type=float, default=None,
                   help="near-duplicate: cosine similarity of the embeddings after subtracting their mean above "
                        "this (default 0.98, as the suggestions' near-duplicate filter)")
    p.add_argument("--json", action="store_true")

    p = add("label", cmd_label, "Record one label (the same code path as the app).")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("image_id", type=int, metavar="IMAGE_ID")
    p.add_argument("label", metavar="LABEL")
    p.add_argument("--annotator", required=True)
    p.add_argument("--seconds", type=float, default=None, help="time spent on the image")
    p.add_argument("--test-split", action="store_true",
                   help="allow labeling a held-out test-split image (refused otherwise); the label is marked "
                        "'test-split' and never replaces its ground truth in test metrics")
    p.add_argument("--no-auto-train", action="store_true",
                   help="do not start a training round even when the round policy says one is due")

    p = add("undo", cmd_undo, "Withdraw an annotator's most recent label.")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("--annotator", required=True)

    p = add("export", cmd_export, "Export the labeled set with provenance.")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("out", type=Path, metavar="OUT")
    _add_choice(p, "--format", EXPORT_FORMAT_CHOICES, "FORMAT", required=True)
    p.add_argument("--split", default="all", choices=["all", "pool", "test"])
    p.add_argument("--classes", default=None, help="only these classes (comma-separated)")
    p.add_argument("--annotator", default=None, help="only images this annotator labeled")
    p.add_argument("--agreement", default=None, choices=["single", "agree", "disagree"])
    p.add_argument("--source-paths", action="store_true",
                   help="add a source_path column: the path relative to the ingest folder, never absolute (off by "
                        "default: file and folder names often carry patient identifiers)")
    p.add_argument("--keep-uids", action="store_true",
                   help="DICOM Study/Series/SOP Instance UIDs and the original files' sha256 as recorded, for PACS "
                        "round trips (default: per-project keyed pseudonyms, UIDs as 2.25.<number>)")
    p.add_argument("--link", action="store_true",
                   help="imagefolder: hard-link the original files (named by image id; they keep their embedded "
                        "metadata) instead of writing metadata-free copies")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing export file, or an imagefolder an earlier export wrote (it then holds "
                        "exactly the current labeled set)")
    p = add("pretrain", cmd_pretrain, "Self-supervised pretraining of a backbone on all project images.")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    _add_choice(p, "--method", SSL_METHOD_CHOICES, "METHOD", default="simclr", help_text="default simclr")
    _add_choice(p, "--backbone", BACKBONE_CHOICES, "BACKBONE", default=None,
                help_text="default: the project's backbone")
    p.add_argument("--init", default="random", help="random | imagenet (cached weights) | PATH to weights")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=None, help="default: the project's image size")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--resume", action="store_true", help="continue the last interrupted run")
    _add_choice(p, "--augment", AUGMENT_CHOICES, "PRESET", default="gentle",
                help_text="view settings: gentle (default: large crops, little exposure change; keeps faint local "
                          "findings) or standard (SimCLR-like crops 40-100%%, exposure, gamma and blur)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--download-weights", action="store_true", help="allow downloading ImageNet weights")
    p.add_argument("--seed", type=int, default=0)

    p = add("embed", cmd_embed, "Embed images not embedded yet and refresh the FAISS index.")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("--checkpoint", default=None, help="backbone checkpoint (default: latest pretraining)")
    p.add_argument("--init", default=None, help="without pretraining: random | imagenet | PATH")
    p.add_argument("--download-weights", action="store_true", help="allow downloading ImageNet weights")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)

    p = add("train", cmd_train, "Run a training round on the current labels and score the test split.")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    _add_choice(p, "--mode", MODE_CHOICES, "MODE", default=None, help_text="default: the round policy's")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--if-due", action="store_true", help="only when the round policy says a round is due")
    p.add_argument("--keep-queue", action="store_true",
                   help="leave the labeling queue as it is (default: replace unclaimed suggestions with a fresh batch)")

    p = add("suggest", cmd_suggest, "Fill the labeling queue with the most useful images.")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("--n", type=int, default=None, help="how many (default: the round policy's batch size)")
    _add_choice(p, "--strategy", STRATEGY_CHOICES, "STRATEGY", default=None,
                help_text="query strategy (default: the round policy's, auto)")
    p.add_argument("--annotator", default=None, help="queue for this annotator (default: for anyone)")
    p.add_argument("--seed", type=int, default=0)

    p = add("explain", cmd_explain, "Grad-CAM++ heatmaps of the latest model for one or more images, as overlay "
                                    "PNGs (the model is loaded once for all of them).")
    p.add_argument("project_dir", type=Path, metavar="PROJECT_DIR")
    p.add_argument("image_ids", type=int, nargs="+", metavar="IMAGE_ID")
    p.add_argument("--class", dest="class_name", default=None, help="class to explain (default: the predicted one)")
    p.add_argument("--round", type=int, default=None, help="training round (default: the latest)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE.png|FOLDER",
                   help="the PNG for one image; a folder (created if missing) for several: FOLDER/image-ID.png")

    p = add("simulate", cmd_simulate, "Oracle simulation: label-efficiency curves of query strategies.")
    p.add_argument("source", type=Path, metavar="IMAGES_DIR|PROJECT_DIR")
    p.add_argument("--strategies", default=None,
                   help="comma-separated (default: random,auto,entropy,margin,coreset,typiclust,probcover,badge,hybrid)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--initial", type=int, default=20)
    p.add_argument("--step", type=int, default=20)
    p.add_argument("--budget", type=int, default=400)
    _add_choice(p, "--mode", MODE_CHOICES, "MODE", default="probe",
                help_text="probe (default: a linear probe on the embeddings per point) or finetune (backbone + "
                          "head fine-tuned per point: slow, a GPU job beyond small pools)")
    p.add_argument("--epochs", type=int, default=5, help="finetune mode: most epochs per point (default 5; early "
                   "stopping on a validation part of the labels)")
    p.add_argument("--batch-size", type=int, default=32, help="finetune mode (default 32)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="finetune mode (default auto)")
    _add_choice(p, "--metric", METRIC_CHOICES, "METRIC", default="macro_auc", help_text="default macro_auc")
    p.add_argument("--out", required=True, type=Path, help="folder for curves.csv, curves.png, summary.csv")
    p.add_argument("--checkpoint", default=None, help="IMAGES_DIR: backbone checkpoint for the embeddings; "
                   "finetune mode: the backbone each point starts from (default: the project's latest pretraining)")
    p.add_argument("--init", default=None, help="IMAGES_DIR without pretraining: random | imagenet | PATH (also "
                   "where fine-tuning starts without a checkpoint)")
    p.add_argument("--pretrain-epochs", type=int, default=5, help="IMAGES_DIR: SSL epochs when no checkpoint")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--image-size", type=int, default=128, help="IMAGES_DIR: model input size")
    p.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    # OpenMP's default busy-waiting slows torch down badly when other processes share the cores
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # files are created private (the database holds password hashes, exports hold patient paths); the app server
    # and training children inherit this
    os.umask(os.umask(0o077) | 0o077)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, in the handler below, not as a traceback at interpreter exit
        return code
    except CxrAlError as exc:
        print(f"cxr-al: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("cxr-al: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`cxr-al status P | head`): stop quietly, as other command-line tools do, and keep
        # the interpreter's final flush of stdout from raising the same error again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the shell's code for a writer whose pipe closed


if __name__ == "__main__":
    sys.exit(main())
