"""Export: every format, provenance columns, agreement, formula neutralising, hostile names, no DICOM headers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from store.errors import CxrAlError
from store.export import labeled_set, write_export
from store.ingest import ingest_folder
from tests.conftest import write_dicom


def _label_some(project) -> None:
    db = project.db
    pool = db.images("pool")["id"].tolist()
    db.add_label(pool[0], "Normal", "alice", seconds_spent=3.5)
    db.add_label(pool[0], "Normal", "bob", seconds_spent=2.0)
    db.add_label(pool[1], "Consolidation", "alice")
    db.add_label(pool[1], "GroundGlass", "bob")
    db.add_label(pool[2], "Interstitial", "alice")


def test_labeled_set_has_provenance_and_agreement(ingested_project) -> None:
    _label_some(ingested_project)
    frame = labeled_set(ingested_project.db)
    assert len(frame) == 3
    assert list(frame["agreement"]) == ["agree", "disagree", "single"]
    first = frame.iloc[0]
    assert first["annotators"] == "alice;bob" and first["seconds_spent"] == 5.5 and len(first["sha256"]) == 64
    assert first["label"] == "Normal" and Path(first["path"]).is_file()
    assert frame.iloc[1]["label"] == "GroundGlass"  # a tie goes to the most recent label
    assert len(labeled_set(ingested_project.db, agreement="disagree")) == 1
    assert len(labeled_set(ingested_project.db, classes=["Interstitial"])) == 1


@pytest.mark.parametrize("fmt,reader", [
    ("csv", pd.read_csv), ("parquet", pd.read_parquet), ("jsonl", lambda p: pd.read_json(p, lines=True))])
def test_table_formats_round_trip(ingested_project, tmp_path, fmt, reader) -> None:
    _label_some(ingested_project)
    frame = labeled_set(ingested_project.db)
    out = write_export(frame, tmp_path / f"labels.{fmt}", fmt)
    back = reader(out)
    assert list(back["image_id"]) == list(frame["image_id"]) and list(back["label"]) == list(frame["label"])
    with pytest.raises(CxrAlError, match="already exists"):
        write_export(frame, out, fmt)


def test_csv_neutralises_formulas(tmp_path) -> None:
    frame = pd.DataFrame({"image_id": [1, 2], "path": ["=HYPERLINK(\"http://x\")", "+cmd|' /C calc'!A0"],
                          "label": ["@SUM(1)", "Normal"]})
    out = write_export(frame, tmp_path / "x.csv", "csv")
    text = out.read_text()
    assert "'=HYPERLINK" in text and "'+cmd" in text and "'@SUM" in text
    assert "\n1,=" not in text


def test_imagefolder_hostile_names_stay_inside_and_dicom_loses_its_header(project, tmp_path) -> None:
    src = tmp_path / "src"
    (src / "Normal").mkdir(parents=True)
    grey = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    hostile = src / "Normal" / "=cmd()|$(rm -rf ~) ..\\..png"
    Image.fromarray(grey).save(hostile, format="PNG")
    write_dicom(src / "Normal" / "scan.dcm", grey.astype(np.uint16) * 16, patient_name="Secret^Patient")
    ingest_folder(project.db, src, project.classes, labels_from="folders", labels_as="labels", test_fraction=0)
    out = tmp_path / "export"
    write_export(labeled_set(project.db), out, "imagefolder")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert all(p.resolve().is_relative_to(out.resolve()) for p in files)
    names = {p.name for p in files}
    assert "manifest.csv" in names
    exported = [p for p in files if p.parent.name == "Normal"]
    assert len(exported) == 2
    dicom_export = next(p for p in exported if p.suffix == ".png" and "scan" in p.name)
    payload = dicom_export.read_bytes()
    assert b"Secret" not in payload and b"PID-12345" not in payload
    assert np.asarray(Image.open(dicom_export)).shape == (32, 32)
    assert not list(tmp_path.glob("*cmd*")) and not list(Path.home().glob("*cmd()*"))
    with pytest.raises(CxrAlError, match="not empty"):
        write_export(labeled_set(project.db), out, "imagefolder")


def test_jsonl_is_valid_json_per_line(ingested_project, tmp_path) -> None:
    _label_some(ingested_project)
    out = write_export(labeled_set(ingested_project.db), tmp_path / "x.jsonl", "jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"image_id", "label", "annotators", "agreement", "round", "sha256"} <= set(rows[0])


def test_split_filter(ingested_project, tmp_path) -> None:
    test_id = int(ingested_project.db.images("test")["id"].iloc[0])
    ingested_project.db.add_label(test_id, "Normal", "alice")
    _label_some(ingested_project)
    assert len(labeled_set(ingested_project.db, split="test")) == 1
    assert len(labeled_set(ingested_project.db, split="pool")) == 3
    with pytest.raises(CxrAlError):
        labeled_set(ingested_project.db, split="bogus")
