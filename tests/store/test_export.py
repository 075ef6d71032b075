"""Export: every format, provenance columns, agreement, formula neutralising, hostile names, metadata-free images,
pseudonymous UIDs, paths relative to the ingest folder, an imagefolder that is exactly one export."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, PngImagePlugin
from pydicom.uid import UID

from store.errors import CxrAlError
from store.export import (
    MARKER,
    export_table,
    labeled_set,
    metadata_free_image,
    pseudonymous_uid,
    relative_source_path,
    strip_jpeg_metadata,
    strip_png_metadata,
    write_export,
)
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


def _export(project, out: Path, fmt: str, **kwargs) -> Path:
    """What `cxr-al export` does, at the store level."""
    labeled = labeled_set(project.db, packed=False)
    table = export_table(project.db, labeled, paths=kwargs.pop("paths", True), keep_uids=kwargs.pop("keep_uids", False))
    return write_export(table, out, fmt, sources=list(labeled["path"]), classes=project.classes, **kwargs)


def test_labeled_set_has_provenance_and_agreement(ingested_project) -> None:
    _label_some(ingested_project)
    frame = labeled_set(ingested_project.db)
    assert len(frame) == 3
    assert list(frame["agreement"]) == ["agree", "disagree", "single"]
    first = frame.iloc[0]
    assert first["annotators"] == "alice;bob" and first["seconds_spent"] == 5.5 and len(first["sha256"]) == 64
    assert first["label"] == "Normal" and Path(first["path"]).is_file()
    assert frame.iloc[1]["label"] == "GroundGlass"  # a tie goes to the most recent label
    assert frame.iloc[1]["annotator_labels"] == "alice=Consolidation;bob=GroundGlass"
    assert len(labeled_set(ingested_project.db, agreement="disagree")) == 1
    assert len(labeled_set(ingested_project.db, classes=["Interstitial"])) == 1
    lists = labeled_set(ingested_project.db, packed=False)
    assert lists.iloc[1]["annotators"] == ["alice", "bob"]
    assert lists.iloc[1]["annotator_labels"] == ["Consolidation", "GroundGlass"]


def test_export_table_paths_are_relative_to_the_ingest_folder(ingested_project, phantom_dir) -> None:
    _label_some(ingested_project)
    labeled = labeled_set(ingested_project.db, packed=False)
    assert "source_path" not in export_table(ingested_project.db, labeled).columns  # off by default
    table = export_table(ingested_project.db, labeled, paths=True)
    assert "path" not in table.columns
    root = (phantom_dir / "images").resolve()
    for rel, full in zip(table["source_path"], labeled["path"], strict=True):
        assert not Path(rel).is_absolute() and (root / rel) == Path(full)
    roots = ["/data/DOE_JOHN/xrays", "/data"]
    assert relative_source_path("/data/DOE_JOHN/xrays/Normal/1.png", roots) == "Normal/1.png"
    assert relative_source_path("/elsewhere/DOE_JOHN/1.png", roots) == "1.png"  # never absolute


def test_uids_are_pseudonymised_consistently_unless_kept(project) -> None:
    pacs = project.root.resolve() / "pacs" / "1.2.840.99.1"  # where a PACS ingest keeps its files
    rows = [{"path": str(pacs / f"1.2.840.99.1.{i}" / f"1.2.840.99.1.{i}.1.dcm"), "sha256": f"{i:064d}",
             "size_bytes": 1, "width": 8, "height": 8, "format": "dicom", "modality": "DX", "split": "pool",
             "patient_key": "pk-1",
             "study_uid": "1.2.840.99.1", "series_uid": f"1.2.840.99.1.{i}", "sop_uid": f"1.2.840.99.1.{i}.1"}
            for i in (1, 2)]
    project.db.add_images(rows)
    for image_id in project.db.images()["id"]:
        project.db.add_label(int(image_id), "Normal", "alice")
    labeled = labeled_set(project.db, packed=False)
    table = export_table(project.db, labeled, paths=True)
    assert table["study_uid"].nunique() == 1 and table["sop_uid"].nunique() == 2  # studies still group
    for uid in [*table["study_uid"], *table["series_uid"], *table["sop_uid"]]:
        assert uid.startswith("2.25.") and UID(uid).is_valid and "1.2.840.99" not in uid
    assert list(table["patient_key"]) == ["pk-1", "pk-1"]  # already a keyed pseudonym
    assert table["study_uid"].iloc[0] == pseudonymous_uid(project.db.secret("pseudonym"), "1.2.840.99.1")
    assert pseudonymous_uid(b"another project", "1.2.840.99.1") != table["study_uid"].iloc[0]
    study, series, sop = table.iloc[0][["study_uid", "series_uid", "sop_uid"]]
    assert table["source_path"].iloc[0] == f"pacs/{study}/{series}/{sop}.dcm"  # the UIDs in its path too
    kept = export_table(project.db, labeled, paths=True, keep_uids=True)
    assert list(kept["sop_uid"]) == ["1.2.840.99.1.1.1", "1.2.840.99.1.2.1"]
    assert kept["source_path"].iloc[0] == "pacs/1.2.840.99.1/1.2.840.99.1.1/1.2.840.99.1.1.1.dcm"


@pytest.mark.parametrize("fmt,reader", [
    ("csv", pd.read_csv), ("parquet", pd.read_parquet), ("jsonl", lambda p: pd.read_json(p, lines=True))])
def test_table_formats_round_trip(ingested_project, tmp_path, fmt, reader) -> None:
    _label_some(ingested_project)
    out = _export(ingested_project, tmp_path / f"labels.{fmt}", fmt)
    back = reader(out)
    frame = labeled_set(ingested_project.db)
    assert list(back["image_id"]) == list(frame["image_id"]) and list(back["label"]) == list(frame["label"])
    if fmt == "csv":  # packed: aligned ';'-joined lists
        assert back["annotators"].iloc[1] == "alice;bob" and back["annotator_labels"].iloc[1] == "Consolidation;GroundGlass"
    else:  # list columns
        assert list(back["annotators"].iloc[1]) == ["alice", "bob"]
        assert list(back["annotator_labels"].iloc[1]) == ["Consolidation", "GroundGlass"]
    with pytest.raises(CxrAlError, match="already exists"):
        _export(ingested_project, out, fmt)


def test_csv_neutralises_formulas(tmp_path) -> None:
    frame = pd.DataFrame({"image_id": [1, 2], "source_path": ["=HYPERLINK(\"http://x\")", "+cmd|' /C calc'!A0"],
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
    _export(project, out, "imagefolder")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert all(p.resolve().is_relative_to(out.resolve()) for p in files)
    assert {"manifest.csv", "classes.txt", "metadata.csv", MARKER} <= {p.name for p in files}
    exported = sorted(p for p in files if p.parent.name == "Normal")
    ids = {int(i) for i in project.db.images()["id"]}
    assert len(exported) == 2 and {int(p.stem) for p in exported} == ids and {p.suffix for p in exported} == {".png"}
    for p in exported:
        payload = p.read_bytes()
        assert b"Secret" not in payload and b"PID-12345" not in payload and b"cmd" not in payload
        assert np.asarray(Image.open(p)).shape == (32, 32)
    manifest = pd.read_csv(out / "manifest.csv")
    assert f"Normal/{hostile.name}" in set(manifest["source_path"])  # relative to the ingest folder
    assert not list(tmp_path.glob("*cmd*")) and not list(Path.home().glob("*cmd()*"))
    with pytest.raises(CxrAlError, match="not empty"):
        _export(project, out, "imagefolder")


def test_png_and_jpeg_lose_their_metadata_and_keep_their_pixels(tmp_path) -> None:
    rng = np.random.default_rng(1)
    grey16 = (rng.random((24, 20)) * 65535).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add_text("Patient", "ROE^JANE")
    info.add_itxt("MRN", "MRN-998877")
    info.add_text("Note", "ROE^JANE " * 50, zip=True)
    png = tmp_path / "a.png"
    Image.fromarray(grey16).save(png, pnginfo=info)
    clean, ext = metadata_free_image(png)
    assert ext == "png" and b"tEXt" not in clean and b"iTXt" not in clean and b"zTXt" not in clean
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(clean))), np.asarray(Image.open(png)))  # 16 bits kept

    rgb = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
    jpg = tmp_path / "b.jpg"
    exif = Image.Exif()
    exif[0x013B] = "ROE^JANE"  # Artist
    exif[0x010E] = "MRN-998877"  # ImageDescription
    Image.fromarray(rgb).save(jpg, exif=exif, comment=b"ROE^JANE", quality=90)
    raw = jpg.read_bytes() + b"trailing MRN-998877"
    assert b"ROE^JANE" in raw
    clean = strip_jpeg_metadata(raw)
    assert b"ROE^JANE" not in clean and b"MRN-998877" not in clean and b"Exif" not in clean
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(clean))), np.asarray(Image.open(jpg)))  # lossless
    with pytest.raises(ValueError):
        strip_jpeg_metadata(raw[:40])
    with pytest.raises(ValueError):
        strip_png_metadata(b"not a png")


def test_a_turned_jpeg_is_exported_upright_as_png(tmp_path) -> None:
    grey = np.zeros((10, 30), np.uint8)
    grey[:, :5] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    exif[0x013B] = "ROE^JANE"
    jpg = tmp_path / "turned.jpg"
    Image.fromarray(grey).save(jpg, exif=exif, quality=100)
    clean, ext = metadata_free_image(jpg)
    assert ext == "png" and b"ROE^JANE" not in clean
    assert np.asarray(Image.open(io.BytesIO(clean))).shape == (30, 10)


def test_overwrite_replaces_only_an_earlier_export(ingested_project, tmp_path) -> None:
    _label_some(ingested_project)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(CxrAlError, match="not written by"):
        _export(ingested_project, foreign, "imagefolder", overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "keep me"
    out = tmp_path / "export"
    _export(ingested_project, out, "imagefolder")
    (out / "train" / "notes.txt").write_text("mine")
    with pytest.raises(CxrAlError, match="did not write"):
        _export(ingested_project, out, "imagefolder", overwrite=True)
    (out / "train" / "notes.txt").unlink()
    _export(ingested_project, out, "imagefolder", overwrite=True)
    marker = json.loads((out / MARKER).read_text())
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != MARKER) == \
        marker["files"]
    assert not list(tmp_path.glob(".export.*"))  # no build or old folder left beside it


def test_jsonl_is_valid_json_per_line(ingested_project, tmp_path) -> None:
    _label_some(ingested_project)
    out = _export(ingested_project, tmp_path / "x.jsonl", "jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"image_id", "label", "annotators", "agreement", "round", "sha256", "source_path"} <= set(rows[0])
    assert rows[0]["annotators"] == ["alice", "bob"]


def test_split_filter(ingested_project, tmp_path) -> None:
    test_id = int(ingested_project.db.images("test")["id"].iloc[0])
    ingested_project.db.add_label(test_id, "Normal", "alice")
    _label_some(ingested_project)
    assert len(labeled_set(ingested_project.db, split="test")) == 1
    assert len(labeled_set(ingested_project.db, split="pool")) == 3
    with pytest.raises(CxrAlError):
        labeled_set(ingested_project.db, split="bogus")


def test_source_file_hashes_are_keyed_unless_kept(ingested_project) -> None:
    _label_some(ingested_project)
    labeled = labeled_set(ingested_project.db, packed=False)
    keyed = export_table(ingested_project.db, labeled)["sha256"]
    assert not set(keyed) & set(labeled["sha256"]) and keyed.str.len().eq(64).all()
    assert list(export_table(ingested_project.db, labeled)["sha256"]) == list(keyed)  # stable within the project
    assert list(export_table(ingested_project.db, labeled, keep_uids=True)["sha256"]) == list(labeled["sha256"])
