"""Ingest a folder of radiographs: hash, decode check, labels from folders or CSV, a held-out test split."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from store.db import ProjectDB
from store.errors import CxrAlError
from store.images import read_image

CHUNK = 500  # images committed per transaction: an interrupted ingest keeps what it finished
SIDE_FILES = {".csv", ".txt", ".json", ".md", ".yaml", ".yml", ".xml", ".html", ".pdf"}


@dataclass
class IngestReport:
    """What an ingest run did, for the CLI summary and the UI."""

    added: int = 0
    already_known: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, path it duplicates)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    labeled: int = 0
    test: int = 0
    labels_without_image: int = 0
    per_class: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"added": self.added, "already_known": self.already_known, "duplicates": len(self.duplicates),
                "skipped": len(self.skipped), "labeled": self.labeled, "test": self.test,
                "labels_without_image": self.labels_without_image, "per_class": self.per_class,
                "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped]}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _walk(images_dir: Path) -> list[Path]:
    """Every regular file below images_dir in a stable order, hidden files and folders left out."""
    files = []
    for p in sorted(images_dir.rglob("*")):
        rel = p.relative_to(images_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file():
            files.append(p)
    return files


def read_label_csv(csv_path: Path, images_dir: Path) -> dict[Path, str]:
    """Labels from a CSV with columns file (or path/filename) and label (or class); paths relative to images_dir."""
    if not csv_path.is_file():
        raise CxrAlError(f"labels file {csv_path} not found")
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = {c.lower().strip(): c for c in (reader.fieldnames or [])}
        file_col = next((cols[c] for c in ("file", "path", "filename", "image") if c in cols), None)
        label_col = next((cols[c] for c in ("label", "class", "finding") if c in cols), None)
        if file_col is None or label_col is None:
            raise CxrAlError(f"{csv_path}: needs a 'file' and a 'label' column, found {reader.fieldnames}")
        out: dict[Path, str] = {}
        for row in reader:
            f, lab = (row.get(file_col) or "").strip(), (row.get(label_col) or "").strip()
            if not f or not lab:
                continue
            p = Path(f)
            out[(p if p.is_absolute() else images_dir / p).resolve()] = lab
    return out


def _canonical_labels(raw: dict[Path, str], classes: list[str]) -> dict[Path, str]:
    lookup = {c.lower(): c for c in classes}
    unknown = sorted({lab for lab in raw.values() if lab.lower() not in lookup})
    if unknown:
        raise CxrAlError(
            f"labels name classes this project does not have: {', '.join(unknown)}; "
            f"project classes: {', '.join(classes)}. Rename the folders/CSV labels or create the project "
            "with those classes. Nothing was ingested.")
    return {p: lookup[lab.lower()] for p, lab in raw.items()}


def choose_test_split(paths: list[str], labels: list[str | None], fraction: float, seed: int) -> set[str]:
    """Stratified held-out test set: round(fraction * n) images of each class, only among labeled ones."""
    if fraction <= 0:
        return set()
    by_class: dict[str, list[str]] = defaultdict(list)
    for p, lab in zip(paths, labels, strict=True):
        if lab is not None:
            by_class[lab].append(p)
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for lab in sorted(by_class):
        members = by_class[lab]
        n_test = int(np.floor(fraction * len(members) + 0.5))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)  # every class keeps pool and test images
        else:
            n_test = 0
        for i in rng.permutation(len(members))[:n_test]:
            chosen.add(members[i])
    return chosen


def ingest_folder(db: ProjectDB, images_dir: Path | str, classes: list[str], *, labels_from: str | None = None,
                  labels_as: str = "oracle", test_fraction: float = 0.2, seed: int = 0,
                  progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None
                  ) -> IngestReport:
    """Add every new, readable, non-duplicate image below images_dir to the project.

    labels_from: None, "folders" (first folder below images_dir is the class) or a CSV path.
    labels_as: "oracle" (hidden ground truth for simulation and test metrics) or "labels"
    (real labels by annotator 'import'). test_fraction reserves a stratified test split among
    new images that have ground truth; test images never enter the labeling queue.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise CxrAlError(f"{images_dir}: no such folder of images")
    if labels_as not in ("oracle", "labels"):
        raise CxrAlError("--as must be 'oracle' or 'labels'")
    if not 0.0 <= test_fraction < 1.0:
        raise CxrAlError("--test-fraction must be in [0, 1)")
    images_dir = images_dir.resolve()
    files = _walk(images_dir)

    raw_labels: dict[Path, str] = {}
    if labels_from == "folders":
        for p in files:
            rel = p.relative_to(images_dir)
            if len(rel.parts) > 1:
                raw_labels[p.resolve()] = rel.parts[0]
    elif labels_from:
        raw_labels = read_label_csv(Path(labels_from), images_dir)
    labels = _canonical_labels(raw_labels, classes)  # raises before anything is written

    known_paths, known_hashes = db.known_paths_and_hashes()
    report = IngestReport()
    rows: list[dict] = []
    seen_hashes: dict[str, str] = {}
    file_labels: list[str | None] = []
    skipped: list[tuple[str, str]] = []
    if on_total:
        on_total(len(files))
    for p in files:
        if progress:
            progress(1)
        path = str(p.resolve())
        if path in known_paths:
            report.already_known += 1
            continue
        if p.suffix.lower() in SIDE_FILES:
            continue  # label sheets and notes beside the images are not images; not worth a warning
        try:
            digest = sha256_file(p)
        except OSError as exc:
            skipped.append((path, f"unreadable: {exc.strerror or exc}"))
            continue
        if digest in known_hashes or digest in seen_hashes:
            report.duplicates.append((path, seen_hashes.get(digest, "an image already in the project")))
            continue
        try:
            _, info = read_image(p)
        except CxrAlError as exc:
            reason = str(exc).split(": ", 1)[-1]
            skipped.append((path, reason))
            continue
        seen_hashes[digest] = path
        rows.append({"path": path, "sha256": digest, "size_bytes": p.stat().st_size, "width": info.width,
                     "height": info.height, "format": info.format, "modality": info.modality, "split": "pool"})
        file_labels.append(labels.get(Path(path)))

    test_paths = choose_test_split([r["path"] for r in rows], file_labels, test_fraction, seed)
    for r in rows:
        if r["path"] in test_paths:
            r["split"] = "test"
    ingested = {Path(r["path"]) for r in rows}
    report.labels_without_image = sum(1 for p in labels if p not in ingested and str(p) not in known_paths)

    counts: Counter[str] = Counter()
    for start in range(0, max(len(rows), 1), CHUNK):
        chunk = rows[start:start + CHUNK]
        chunk_labels = [(r["path"], lab) for r, lab in zip(chunk, file_labels[start:start + CHUNK], strict=True)
                        if lab is not None]
        is_last = start + CHUNK >= len(rows)
        db.add_images(chunk, oracle=chunk_labels if labels_as == "oracle" else (),
                      labels=chunk_labels if labels_as == "labels" else (),
                      skipped=skipped if is_last else ())
        counts.update(lab for _, lab in chunk_labels)
    report.added = len(rows)
    report.skipped = skipped
    report.labeled = sum(counts.values())
    report.test = len(test_paths)
    report.per_class = dict(sorted(counts.items()))
    return report
