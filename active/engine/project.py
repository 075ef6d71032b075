"""Creating, opening and filling a project (ingest)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from store.ingest import IngestReport, ingest_folder
from store.project import Project, init_project, open_project

__all__ = ["Project", "create_project", "ingest", "open_project"]


def create_project(root: Path | str, classes: list[str] | str, **kwargs: Any) -> Project:
    """Create a project folder with its database and configuration."""
    if isinstance(classes, str):
        classes = [c for c in classes.split(",")]
    return init_project(root, classes, **kwargs)


def ingest(project: Project, images_dir: Path | str, *, labels_from: str | None = None, labels_as: str = "oracle",
           test_fraction: float | None = None, seed: int = 0,
           progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None,
           follow_links: bool = False, groups_from: str | Path | None = None) -> IngestReport:
    """Ingest a folder into the project (see store.ingest.ingest_folder); test split only with labels, drawn by
    patient when patients are known (groups_from CSV or DICOM PatientID)."""
    if test_fraction is None:
        test_fraction = 0.2 if labels_from else 0.0
    return ingest_folder(project.db, images_dir, project.classes, labels_from=labels_from, labels_as=labels_as,
                         test_fraction=test_fraction, seed=seed, progress=progress, on_total=on_total,
                         follow_links=follow_links, groups_from=groups_from)

