"""Exports of the labeled set for researchers: filtered tables, files and downloads."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd

from store.errors import CxrAlError
from store.export import FORMATS, export_table, labeled_set, safe_component, write_export
from store.project import Project

EXPORT_EXTENSIONS = {fmt: "zip" if fmt == "imagefolder" else fmt for fmt in FORMATS}  # a folder downloads as a zip


def _labeled(project: Project, split: str, classes: list[str] | None, annotator: str | None,
             agreement: str | None) -> pd.DataFrame:
    if classes:
        classes = [project.canonical_class(c) for c in classes]
    if agreement and agreement not in ("single", "agree", "disagree"):
        raise CxrAlError("agreement filter must be single, agree or disagree")
    return labeled_set(project.db, split=split, classes=classes, annotator=annotator, agreement=agreement,
                       packed=False)


def export_frame(project: Project, *, split: str = "all", classes: list[str] | None = None,
                 annotator: str | None = None, agreement: str | None = None, paths: bool = False,
                 keep_uids: bool = False) -> pd.DataFrame:
    """The labeled set as it is exported (no patient identifiers, see store.export), filtered as asked."""
    return export_table(project.db, _labeled(project, split, classes, annotator, agreement), paths=paths,
                        keep_uids=keep_uids)


def export(project: Project, out: Path | str, fmt: str, *, split: str = "all", classes: list[str] | None = None,
           annotator: str | None = None, agreement: str | None = None, paths: bool = False,
           keep_uids: bool = False, link: bool = False, overwrite: bool = False,
           actor: str | None = None) -> tuple[Path, int]:
    """Write the labeled set to OUT; returns (path written, number of images).

    paths: a source_path column relative to the ingest folder (False: none). keep_uids: DICOM UIDs as
    recorded instead of project pseudonyms. link (imagefolder): hard links to the original files, which keep
    their embedded metadata, instead of metadata-free copies.
    """
    labeled = _labeled(project, split, classes, annotator, agreement)
    table = export_table(project.db, labeled, paths=paths, keep_uids=keep_uids)
    path = write_export(table, out, fmt, sources=labeled["path"].tolist(), classes=project.classes, link=link,
                        overwrite=overwrite)
    project.db.log_event("export", actor, out=str(path), format=fmt, rows=len(table), split=split, paths=paths,
                         keep_uids=keep_uids, link=link)
    return path, len(table)


def export_file_name(project: Project, fmt: str, split: str = "all") -> str:
    """The download name of an export, e.g. `ward7-labels-pool.csv` (imagefolder: a .zip)."""
    if fmt not in EXPORT_EXTENSIONS:
        raise CxrAlError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_EXTENSIONS)}")
    stem = safe_component(f"{project.config.get('name') or 'cxr-al'}-labels-{split}").replace(" ", "_")
    return f"{stem}.{EXPORT_EXTENSIONS[fmt]}"


def export_download(project: Project, fmt: str, *, split: str = "all", classes: list[str] | None = None,
                    annotator: str | None = None, agreement: str | None = None, paths: bool = False,
                    keep_uids: bool = False, actor: str | None = None) -> bytes:
    """The filtered labeled set as the bytes of one downloadable file (imagefolder as a zip); logged as an export."""
    file_name = export_file_name(project, fmt, split)
    stem = file_name.rsplit(".", 1)[0]
    with tempfile.TemporaryDirectory(prefix="cxr-al-export-") as tmp:
        out = Path(tmp) / (stem if fmt == "imagefolder" else file_name)
        path, _ = export(project, out, fmt, split=split, classes=classes, annotator=annotator,
                         agreement=agreement, paths=paths, keep_uids=keep_uids, actor=actor)
        if fmt == "imagefolder":
            path = Path(shutil.make_archive(str(Path(tmp) / "archive"), "zip", root_dir=tmp, base_dir=stem))
        return path.read_bytes()

