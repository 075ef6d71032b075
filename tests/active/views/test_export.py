"""Exports free of patient identifiers (every byte of every format searched for planted ones) and exports
researchers load directly (torchvision ImageFolder, Hugging Face `imagefolder`), exact after a relabel."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image, PngImagePlugin

from active.views.export import export, export_download
from store.export import MARKER, labeled_set
from store.ingest import ingest_folder
from store.phantoms import PHANTOM_CLASSES
from store.project import init_project
from tests.conftest import write_dicom

NAME_IN_STEM = "DOE_JOHN"
ABOVE_ROOT = "SMITH_ALICE_case"  # a folder above the ingest folder: gone even from relative paths
IDENTIFIERS = ["ROE^JANE", "MRN-998877", "ST_ELSEWHERE_HOSPITAL", NAME_IN_STEM, ABOVE_ROOT]
STUDY_UID = "1.2.826.0.1.3680043.99.777"


def _phantom(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((24, 24)) * 200 + 20).astype(np.uint8)


def _plant(root: Path) -> Path:
    """Two images per class, every one carrying identifiers: in its name, PNG text, JPEG EXIF and comment,
    TIFF tags, DICOM PatientName / PatientID / InstitutionName."""
    images = root / ABOVE_ROOT / "images"
    for k, cls in enumerate(PHANTOM_CLASSES):
        (images / cls).mkdir(parents=True)
        for j in range(2):
            seed = 10 * k + j
            stem = images / cls / f"4{seed}_{NAME_IN_STEM}_1CT{j}"
            kind = (k + j) % 4
            if kind == 0:
                info = PngImagePlugin.PngInfo()
                info.add_text("Patient", "ROE^JANE")
                info.add_itxt("MRN", "MRN-998877")
                Image.fromarray(_phantom(seed)).save(stem.with_suffix(".png"), pnginfo=info)
            elif kind == 1:
                exif = Image.Exif()
                exif[0x013B] = "ROE^JANE"
                exif[0x010E] = "MRN-998877 ST_ELSEWHERE_HOSPITAL"
                Image.fromarray(_phantom(seed)).save(stem.with_suffix(".jpg"), exif=exif, comment=b"ROE^JANE")
            elif kind == 2:
                Image.fromarray(_phantom(seed)).save(stem.with_suffix(".tif"),
                                                     tiffinfo={270: "ROE^JANE MRN-998877", 315: "ROE^JANE"})
            else:
                path = write_dicom(stem.with_suffix(".dcm"), _phantom(seed).astype(np.uint16) * 16,
                                   patient_name="ROE^JANE")
                ds = pydicom.dcmread(path)
                ds.PatientID = "MRN-998877"
                ds.InstitutionName = "ST_ELSEWHERE_HOSPITAL"
                ds.StudyInstanceUID = STUDY_UID
                ds.save_as(path)
    return images


@pytest.fixture
def planted(tmp_path):
    images = _plant(tmp_path / "data")
    project = init_project(tmp_path / "project", list(PHANTOM_CLASSES), image_size=24)
    ingest_folder(project.db, images, project.classes, labels_from="folders", labels_as="labels",
                  test_fraction=0.25, seed=0)
    pool = [int(i) for i in project.db.images("pool")["id"]]
    project.db.add_label(pool[0], PHANTOM_CLASSES[0], "alice")
    project.db.add_label(pool[1], PHANTOM_CLASSES[2], "alice")
    return project


def _leaks(folder: Path, forbidden: list[str]) -> list[tuple[str, str]]:
    """(file, identifier) for every exported file holding a forbidden string, in its bytes or, for Parquet
    and zip files (compressed), in their decoded contents."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        texts = [data]
        if path.suffix == ".parquet":
            texts.append(pd.read_parquet(path).to_json(date_format="iso").encode())
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                texts += [archive.read(n) for n in archive.namelist()] + [" ".join(archive.namelist()).encode()]
        for needle in forbidden:
            if any(needle.lower().encode() in t.lower() for t in texts) or needle.lower() in path.name.lower():
                found.append((path.relative_to(folder).as_posix(), needle))
        if path.suffix == ".png":
            assert not {b"tEXt", b"iTXt", b"zTXt", b"eXIf", b"iCCP"} & _png_chunks(data), path
    return found


def _png_chunks(data: bytes) -> set[bytes]:
    kinds, i = set(), 8
    while i + 8 <= len(data):
        kinds.add(data[i + 4:i + 8])
        i += 12 + int.from_bytes(data[i:i + 4], "big")
    return kinds


def _export_everything(project, out: Path, **options) -> None:
    out.mkdir()
    for fmt in ("csv", "parquet", "jsonl"):
        export(project, out / f"labels.{fmt}", fmt, **options)
    export(project, out / "folder", "imagefolder", **options)
    (out / "download.zip").write_bytes(export_download(project, "imagefolder", **options))


def test_no_planted_identifier_in_any_exported_byte(planted, tmp_path) -> None:
    assert len(labeled_set(planted.db)) == 8
    out = tmp_path / "default"
    _export_everything(planted, out)  # the defaults: no source paths, pseudonymous UIDs
    forbidden = [*IDENTIFIERS, str(tmp_path), STUDY_UID]
    assert _leaks(out, forbidden) == []
    names = {p.name for p in (out / "folder").rglob("*") if p.parent.parent.name in ("train", "test")}
    assert names and all(n.split(".")[0].isdigit() for n in names)  # named by image id
    jpegs = list((out / "folder").rglob("*.jpg"))
    assert jpegs and all(b"Exif" not in p.read_bytes() and b"\xff\xfe" not in p.read_bytes() for p in jpegs)


def test_source_paths_are_relative_and_uids_kept_only_when_asked(planted, tmp_path) -> None:
    out = tmp_path / "with-paths"
    _export_everything(planted, out, paths=True)
    leaks = _leaks(out, [*IDENTIFIERS, str(tmp_path), STUDY_UID])
    # the name in a file's stem is in its relative source_path, and only there (README: --source-paths)
    assert leaks and {needle for _, needle in leaks} == {NAME_IN_STEM}
    paths = pd.read_csv(out / "labels.csv")["source_path"]
    assert all(p.split("/")[0] in PHANTOM_CLASSES for p in paths)
    kept = tmp_path / "kept"
    kept.mkdir()
    export(planted, kept / "labels.jsonl", "jsonl", paths=False, keep_uids=True)
    if planted.db.images()["study_uid"].notna().any():  # ingest records DICOM UIDs (the grouping work)
        assert STUDY_UID in (kept / "labels.jsonl").read_text()
    assert "ROE^JANE" not in (kept / "labels.jsonl").read_text()


def _exported_images(out: Path) -> set[tuple[str, str, int]]:
    return {(p.parent.parent.name, p.parent.name, int(p.stem)) for p in out.rglob("*")
            if p.is_file() and p.parent.parent.name in ("train", "test")}


def _expected(project) -> set[tuple[str, str, int]]:
    frame = labeled_set(project.db)
    return {({"pool": "train"}.get(s, s), lab, int(i)) for s, lab, i in zip(frame["split"], frame["label"],
                                                                             frame["image_id"], strict=True)}


def test_imagefolder_is_exactly_the_labeled_set_after_a_relabel_and_overwrite(planted, tmp_path) -> None:
    out = tmp_path / "folder"
    export(planted, out, "imagefolder")
    assert _exported_images(out) == _expected(planted)
    assert {s for s, _, _ in _exported_images(out)} == {"train", "test"}
    moved = int(planted.db.images("pool")["id"].iloc[-1])
    before = labeled_set(planted.db).set_index("image_id")["label"][moved]
    after = next(c for c in PHANTOM_CLASSES if c != before)
    planted.db.add_label(moved, after, "import")  # the same annotator changes its mind
    export(planted, out, "imagefolder", overwrite=True)
    assert _exported_images(out) == _expected(planted)
    assert [cls for _, cls, i in _exported_images(out) if i == moved] == [after]
    assert (out / "classes.txt").read_text().split("\n")[:-1] == list(PHANTOM_CLASSES)  # project order
    metadata = pd.read_csv(out / "train" / "metadata.csv")
    assert all((out / "train" / f).is_file() for f in metadata["file_name"])
    assert metadata.set_index("image_id")["label"][moved] == after
    assert (out / MARKER).is_file()


def test_torchvision_loads_the_imagefolder(planted, tmp_path) -> None:
    from torchvision.datasets import ImageFolder

    out = tmp_path / "folder"
    export(planted, out, "imagefolder")
    consensus = labeled_set(planted.db).set_index("image_id")["label"]
    for split in ("train", "test"):
        data = ImageFolder(str(out / split))
        assert len(data) == sum(1 for s, _, _ in _exported_images(out) if s == split)
        for path, target in data.samples:
            assert data.classes[target] == consensus[int(Path(path).stem)]
        image, _ = data[0]
        assert image.size == (24, 24)


def test_hugging_face_datasets_loads_the_imagefolder_with_its_splits(planted, tmp_path, monkeypatch) -> None:
    for offline in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # read when datasets is imported: no network
        monkeypatch.setenv(offline, "1")
    datasets = pytest.importorskip("datasets")  # not a dependency (large): tried with it installed aside
    out = tmp_path / "folder"
    export(planted, out, "imagefolder")
    consensus = labeled_set(planted.db).set_index("image_id")["label"]
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "hf-cache"))
    assert set(loaded) == {"train", "test"}
    for split, rows in loaded.items():
        assert len(rows) == sum(1 for s, _, _ in _exported_images(out) if s == split)
        for row in rows:
            assert row["label"] == consensus[row["image_id"]] and row["image"].size == (24, 24)


def test_cli_export_links_originals_with_a_warning_and_omits_paths(planted, tmp_path, capsys) -> None:
    from active.delivery.cli import build_parser

    out = tmp_path / "linked"
    args = build_parser().parse_args(["export", str(planted.root), str(out), "--format", "imagefolder", "--link",
                                      "--keep-uids"])
    assert args.func(args) == 0
    assert "--link" in capsys.readouterr().err
    sources = labeled_set(planted.db).set_index("image_id")["path"]
    images = [p for p in out.rglob("*") if p.is_file() and p.parent.parent.name in ("train", "test")]
    linked = [p for p in images if p.samefile(sources[int(p.stem)])]
    assert linked and all(not sources[int(p.stem)].endswith(".dcm") for p in linked)  # DICOM still as PNG
    assert all(p.stem.isdigit() for p in images)  # names stay pseudonymous
    assert "source_path" not in pd.read_csv(out / "manifest.csv").columns
    assert '"linked_originals": true' in (out / MARKER).read_text()
