"""The service API: what the CLI and the Streamlit app call. It joins store/ and models/."""

from __future__ import annotations

import functools
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from store.errors import CxrAlError
from store.export import FORMATS, labeled_set, safe_component, write_export
from store.ingest import IngestReport, ingest_folder
from store.project import Project, init_project, open_project

__all__ = ["Project", "create_project", "open_project", "ingest", "status", "record_label", "undo_label",
           "export", "export_frame", "export_download", "export_file_name", "validate_annotator", "explain", "neighbors"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
RESERVED_NAMES = {"import", "oracle", "system"}
EXPORT_EXTENSIONS = {fmt: "zip" if fmt == "imagefolder" else fmt for fmt in FORMATS}  # a folder downloads as a zip


def validate_annotator(name: str) -> str:
    """Annotator names are short identifiers; 'import' and 'oracle' are reserved for the system."""
    name = (name or "").strip()
    if not _NAME_RE.match(name):
        raise CxrAlError(f"annotator name {name!r} is not valid: use letters, digits and _ . @ - (max 64)")
    if name.lower() in RESERVED_NAMES:
        raise CxrAlError(f"annotator name {name!r} is reserved; choose another")
    return name


def create_project(root: Path | str, classes: list[str] | str, **kwargs: Any) -> Project:
    """Create a project folder with its database and configuration."""
    if isinstance(classes, str):
        classes = [c for c in classes.split(",")]
    return init_project(root, classes, **kwargs)


def ingest(project: Project, images_dir: Path | str, *, labels_from: str | None = None, labels_as: str = "oracle",
           test_fraction: float | None = None, seed: int = 0,
           progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None
           ) -> IngestReport:
    """Ingest a folder into the project (see store.ingest.ingest_folder); test split only with labels."""
    if test_fraction is None:
        test_fraction = 0.2 if labels_from else 0.0
    return ingest_folder(project.db, images_dir, project.classes, labels_from=labels_from, labels_as=labels_as,
                         test_fraction=test_fraction, seed=seed, progress=progress, on_total=on_total)


def status(project: Project) -> dict[str, Any]:
    """Everything `cxr-al status` shows, JSON-serialisable."""
    summary = project.db.summary()
    summary["project"] = {"name": project.config.get("name"), "root": str(project.root.resolve()),
                          "classes": project.classes, "positive_class": project.config.get("positive_class"),
                          "round_policy": project.round_policy}
    summary["annotators"] = sorted(a for a in summary["labels_per_annotator"] if a != "import")
    summary["pretraining"] = [
        {"round_id": r["id"], "status": r["status"], "checkpoint": r["checkpoint"],
         "final_loss": r["metrics"].get("final_loss"), "images_per_second": r["metrics"].get("images_per_second")}
        for r in summary["rounds"] if r["kind"] == "pretrain"]
    summary["embeddings"], summary["index"] = _embedding_status(project)
    summary["round_due"] = bool(_round_due(project))
    return summary


def _embedding_status(project: Project) -> tuple[int, dict[str, Any] | None]:
    """Embeddings stored and the FAISS index as it was last written (type, size, dim, checkpoint)."""
    import pyarrow.parquet as pq

    from active.rounds import EMBEDDINGS_NAME, INDEX_DIR
    from store.index import EmbeddingIndex

    path = project.artifacts / EMBEDDINGS_NAME
    count = int(pq.read_metadata(path).num_rows) if path.exists() else 0
    meta = EmbeddingIndex.read_metadata(project.artifacts / INDEX_DIR)
    index = None if meta is None else {"type": meta["kind"], "size": meta["count"], "dim": meta["dim"],
                                       "checkpoint_tag": meta["checkpoint_tag"]}
    return count, index


def _round_due(project: Project) -> bool:
    from active.rounds import round_due

    return round_due(project)


def record_label(project: Project, image_id: int, label: str, annotator: str, *,
                 seconds_spent: float | None = None, source: str = "cli") -> int:
    """Validate and store one label; it is committed when this returns. Returns the label id."""
    canonical = project.canonical_class(label)
    annotator = validate_annotator(annotator)
    if seconds_spent is not None and not (0 <= float(seconds_spent) < 86400):
        raise CxrAlError("seconds spent must be between 0 and 86400")
    return project.db.add_label(int(image_id), canonical, annotator, seconds_spent=seconds_spent, source=source)


def undo_label(project: Project, annotator: str) -> dict[str, Any] | None:
    """Withdraw the annotator's last label (the one before it, if any, becomes current again)."""
    return project.db.undo_last_label(validate_annotator(annotator))


def export_frame(project: Project, *, split: str = "all", classes: list[str] | None = None,
                 annotator: str | None = None, agreement: str | None = None) -> pd.DataFrame:
    """The labeled set as a table, filtered as asked."""
    if classes:
        classes = [project.canonical_class(c) for c in classes]
    if agreement and agreement not in ("single", "agree", "disagree"):
        raise CxrAlError("agreement filter must be single, agree or disagree")
    return labeled_set(project.db, split=split, classes=classes, annotator=annotator, agreement=agreement)


def export(project: Project, out: Path | str, fmt: str, *, split: str = "all", classes: list[str] | None = None,
           annotator: str | None = None, agreement: str | None = None, link: bool = False,
           overwrite: bool = False, actor: str | None = None) -> tuple[Path, int]:
    """Write the labeled set to OUT; returns (path written, number of images)."""
    frame = export_frame(project, split=split, classes=classes, annotator=annotator, agreement=agreement)
    path = write_export(frame, out, fmt, link=link, overwrite=overwrite)
    project.db.log_event("export", actor, out=str(path), format=fmt, rows=len(frame), split=split)
    return path, len(frame)


@functools.lru_cache(maxsize=2)
def _round_model(checkpoint: str, mtime: float) -> tuple[Any, dict[str, Any], threading.Lock]:
    """A round's model loaded once (the app explains image after image with the same model), with its lock."""
    from models.round_model import load_round_model

    model, meta = load_round_model(checkpoint)
    return model, meta, threading.Lock()


def explain(project: Project, image_ids: list[int], *, class_name: str | None = None,
            round_id: int | None = None) -> list[dict[str, Any]]:
    """Grad-CAM++ of the latest (or a given) training round's model for some images: for each, the
    heatmap (S x S in [0, 1]), an overlay PNG at the image's resolution, the explained class and the probabilities."""
    from active.rounds import latest_round
    from models.gradcam import explain_batch, overlay_png
    from store.images import read_grey

    if round_id is None:
        last = latest_round(project, "train")
        if last is None:
            raise CxrAlError("no trained model yet: run a training round (`cxr-al train`) first")
        checkpoint = last["checkpoint"]
    else:
        rounds = project.db.rounds("train")
        match = rounds[(rounds["id"] == round_id) & (rounds["status"] == "done")]
        if match.empty:
            raise CxrAlError(f"no finished training round {round_id}")
        checkpoint = match.iloc[0]["checkpoint"]
    if not checkpoint:
        raise CxrAlError("that round kept no model checkpoint (a probe without a pretrained backbone)")
    model, meta, lock = _round_model(str(checkpoint), Path(checkpoint).stat().st_mtime if Path(checkpoint).exists() else 0.0)
    paths = [project.db.image(int(i))["path"] for i in image_ids]
    targets = None if class_name is None else [project.class_index(class_name)] * len(paths)
    with lock:  # Grad-CAM hooks the model's layers: one explanation at a time per model
        result = explain_batch(model, paths, targets,
                               image_size=int(meta.get("image_size", project.config["image_size"])))
    out = []
    for i, path in enumerate(paths):
        grey = read_grey(path)
        out.append({"image_id": int(image_ids[i]), "heatmap": result.heatmaps[i],
                    "class": project.classes[int(result.class_indices[i])],
                    "probs": {c: float(p) for c, p in zip(project.classes, result.probs[i], strict=True)},
                    "overlay_png": overlay_png(grey, result.heatmaps[i])})
    return out


def embeddings_stamp(project: Project) -> float | None:
    """When the embeddings (and so the FAISS index built from them) last changed; None before `cxr-al embed`."""
    from active.rounds import EMBEDDINGS_NAME

    path = project.artifacts / EMBEDDINGS_NAME
    return path.stat().st_mtime if path.exists() else None


def neighbors(project: Project, image_id: int, k: int = 6, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """The k most similar images in the embedding index, with their current (consensus) labels if any.

    `labels` (image_id, label), when the caller holds a recent copy, saves recomputing the consensus."""
    from active.rounds import load_index

    index = load_index(project)
    ids, scores = index.neighbors(int(image_id), k)
    labels = (export_frame(project) if labels is None else labels)[["image_id", "label"]]
    frame = pd.DataFrame({"image_id": ids.astype(int), "similarity": scores.astype(float)})
    return frame.merge(labels, on="image_id", how="left")


def export_file_name(project: Project, fmt: str, split: str = "all") -> str:
    """The download name of an export, e.g. `ward7-labels-pool.csv` (imagefolder: a .zip)."""
    if fmt not in EXPORT_EXTENSIONS:
        raise CxrAlError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_EXTENSIONS)}")
    stem = safe_component(f"{project.config.get('name') or 'cxr-al'}-labels-{split}").replace(" ", "_")
    return f"{stem}.{EXPORT_EXTENSIONS[fmt]}"


def export_download(project: Project, fmt: str, *, split: str = "all", classes: list[str] | None = None,
                    annotator: str | None = None, agreement: str | None = None, actor: str | None = None) -> bytes:
    """The filtered labeled set as the bytes of one downloadable file (imagefolder as a zip); logged as an export."""
    file_name = export_file_name(project, fmt, split)
    stem = file_name.rsplit(".", 1)[0]
    with tempfile.TemporaryDirectory(prefix="cxr-al-export-") as tmp:
        out = Path(tmp) / (stem if fmt == "imagefolder" else file_name)
        path, _ = export(project, out, fmt, split=split, classes=classes, annotator=annotator,
                         agreement=agreement, actor=actor)
        if fmt == "imagefolder":
            path = Path(shutil.make_archive(str(Path(tmp) / "archive"), "zip", root_dir=tmp, base_dir=stem))
        return path.read_bytes()


POLICY_LIMITS = {"train_every": (0, 100_000), "batch_size": (1, 1_000), "epochs": (1, 1_000)}


def update_round_policy(project: Project, actor: str, *, train_every: int | None = None, mode: str | None = None,
                        strategy: str | None = None, batch_size: int | None = None, epochs: int | None = None,
                        double_read_fraction: float | None = None) -> dict[str, Any]:
    """Change the round policy (and the double-read fraction) in project.yaml, written atomically; every
    value is checked before anything is written, and the change is logged with who made it. Returns the
    new policy (with double_read_fraction)."""
    from active.strategies import STRATEGIES

    actor = validate_annotator(actor)
    policy = dict(project.round_policy)
    changes: dict[str, Any] = {}
    for key, value in (("train_every", train_every), ("batch_size", batch_size), ("epochs", epochs)):
        if value is None:
            continue
        low, high = POLICY_LIMITS[key]
        if isinstance(value, bool) or int(value) != value or not low <= int(value) <= high:
            raise CxrAlError(f"{key} must be a whole number from {low} to {high}, got {value!r}")
        changes[key] = int(value)
    if mode is not None:
        if mode not in ("probe", "finetune"):
            raise CxrAlError(f"mode must be probe or finetune, got {mode!r}")
        changes["mode"] = mode
    if strategy is not None:
        if strategy not in STRATEGIES:
            raise CxrAlError(f"unknown query strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        changes["strategy"] = strategy
    fraction = project.config.get("double_read_fraction", 0.0)
    if double_read_fraction is not None:
        if not 0.0 <= float(double_read_fraction) <= 1.0:
            raise CxrAlError(f"double_read_fraction must be between 0 and 1, got {double_read_fraction!r}")
        fraction = float(double_read_fraction)
    before = {**policy, "double_read_fraction": project.config.get("double_read_fraction", 0.0)}
    policy.update(changes)
    project.config["round_policy"] = policy
    project.config["double_read_fraction"] = fraction
    project.save_config()
    after = {**policy, "double_read_fraction": fraction}
    changed = {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}
    if changed:
        project.db.log_event("round_policy_changed", actor, changes=changed)
    return after
