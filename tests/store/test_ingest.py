"""Ingest: every format, bad files reported not fatal, duplicates, re-ingest, labels, test split."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from store.errors import CxrAlError
from store.ingest import ingest_folder
from tests.conftest import write_dicom


def _mixed_folder(root: Path, phantom_dir: Path) -> Path:
    """A folder with PNG, JPEG, BMP, TIFF, DICOM (one without extension), and bad files."""
    src = sorted((phantom_dir / "images").rglob("*.png"))
    root.mkdir()
    pixels = [np.asarray(Image.open(p)) for p in src[:6]]
    Image.fromarray(pixels[0]).save(root / "a.png")
    Image.fromarray(pixels[1]).save(root / "b.jpg", quality=92)
    Image.fromarray(pixels[2]).save(root / "c.bmp")
    Image.fromarray(pixels[3]).save(root / "d.tiff")
    write_dicom(root / "e.dcm", pixels[4].astype(np.uint16) * 16, photometric="MONOCHROME1")
    write_dicom(root / "f_no_ext", pixels[5].astype(np.uint16) * 256)
    (root / "zero.png").write_bytes(b"")
    (root / "notes.bin").write_bytes(b"\x00\x01 definitely not an image")
    data = (root / "a.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 3])
    write_dicom(root / "report.dcm", np.zeros((2, 2), np.uint16), with_pixels=False)
    shutil.copy(root / "a.png", root / "copy_of_a.png")
    (root / ".DS_Store").write_bytes(b"junk")
    return root


def test_mixed_formats_bad_files_and_duplicates(project, phantom_dir, tmp_path) -> None:
    folder = _mixed_folder(tmp_path / "mixed", phantom_dir)
    report = ingest_folder(project.db, folder, project.classes)
    assert report.added == 6
    assert len(report.duplicates) == 1 and report.duplicates[0][0].endswith("copy_of_a.png")
    reasons = dict((Path(p).name, r) for p, r in report.skipped)
    assert set(reasons) == {"zero.png", "notes.bin", "truncated.png", "report.dcm"}
    assert "empty" in reasons["zero.png"] and "no image" in reasons["report.dcm"]
    images = project.db.images()
    assert sorted(images["format"]) == ["bmp", "dicom", "dicom", "jpeg", "png", "tiff"]
    assert set(images.loc[images["format"] == "dicom", "modality"]) == {"DX"}
    assert project.db.summary()["skipped"] == 4

    again = ingest_folder(project.db, folder, project.classes)  # re-running adds nothing new
    assert again.added == 0 and again.already_known == 6
    (folder / "new.png").write_bytes((phantom_dir / "images" / "Normal").iterdir().__next__().read_bytes())
    third = ingest_folder(project.db, folder, project.classes)
    assert third.added == 1 and len(project.db.images()) == 7


def test_labels_from_folders_as_oracle_with_stratified_test_split(project, phantom_dir) -> None:
    report = ingest_folder(project.db, phantom_dir / "images", project.classes, labels_from="folders",
                           labels_as="oracle", test_fraction=0.2, seed=1)
    assert report.added == 40 and report.labeled == 40 and report.test == 8
    images = project.db.images()
    oracle = project.db.oracle_labels().merge(images, left_on="image_id", right_on="id")
    per_class_test = oracle[oracle["split"] == "test"].groupby("label").size()
    assert per_class_test.to_dict() == {c: 2 for c in project.classes}
    assert project.db.current_labels().empty  # ground truth is hidden, not a label


def test_same_seed_same_split(tmp_path, phantom_dir) -> None:
    from store.project import init_project

    splits = []
    for name in ("p1", "p2"):
        p = init_project(tmp_path / name, ["Normal", "Consolidation", "GroundGlass", "Interstitial"])
        ingest_folder(p.db, phantom_dir / "images", p.classes, labels_from="folders", test_fraction=0.25, seed=7)
        splits.append(dict(zip(p.db.images()["path"], p.db.images()["split"], strict=True)))
    assert splits[0] == splits[1]


def test_labels_from_csv_as_real_labels(project, phantom_dir) -> None:
    report = ingest_folder(project.db, phantom_dir / "images", project.classes,
                           labels_from=str(phantom_dir / "labels.csv"), labels_as="labels", test_fraction=0.0)
    assert report.labeled == 40
    labels = project.db.current_labels()
    assert len(labels) == 40 and set(labels["annotator"]) == {"import"}


def test_unknown_class_is_refused_before_anything_is_written(project, phantom_dir, tmp_path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(phantom_dir / "images", bad)
    (bad / "Normal").rename(bad / "Pneumothorax")
    with pytest.raises(CxrAlError, match="Pneumothorax"):
        ingest_folder(project.db, bad, project.classes, labels_from="folders")
    assert project.db.images().empty


def test_class_names_match_case_insensitively(project, phantom_dir, tmp_path) -> None:
    folder = tmp_path / "lower"
    shutil.copytree(phantom_dir / "images", folder)
    (folder / "Normal").rename(folder / "normal")
    report = ingest_folder(project.db, folder, project.classes, labels_from="folders", test_fraction=0.0)
    assert report.per_class["Normal"] == 10


@pytest.mark.parametrize("bad", ["missing_dir", "file"])
def test_bad_paths(project, tmp_path, bad) -> None:
    target = tmp_path / bad
    if bad == "file":
        target.write_text("x")
    with pytest.raises(CxrAlError, match="no such folder"):
        ingest_folder(project.db, target, project.classes)
