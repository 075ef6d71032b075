"""Exports of the labeled set for researchers: filtered tables, files and downloads."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd

from store.errors import CxrAlError
from store.export import FORMATS, labeled_set, safe_component, write_export
from store.project import Project

EXPORT_EXTENSIONS = {fmt: "zip" if fmt == "imagefolder" else fmt for fmt in FORMATS}  # a folder downloads as a zip


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

