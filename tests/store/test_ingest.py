"""Ingest: every format, bad files reported not fatal, duplicates, re-ingest, labels, test split."""

from __future__ import annotations

import os
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


# ----------------------------------------------------------------- files that used to abort an ingest
@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """The two oversized PNGs of the issue, made once: a 30000^2 1-bit bomb and a 13000^2 16-bit PNG (~330 KB)."""
    from tests.store.hostile_files import write_blank_png

    folder = tmp_path_factory.mktemp("bombs")
    return {"bomb.png": write_blank_png(folder / "bomb.png", 30000, 30000, 1),
            "big16.png": write_blank_png(folder / "big16.png", 13000, 13000, 16)}


def _hostile_folder(root: Path, phantom_dir: Path, bombs: dict[str, Path]) -> Path:
    """Good images among every kind of file that used to abort an ingest or pass silently."""
    import pydicom.data

    from tests.store.hostile_files import (
        RAMP,
        make_deep_folder,
        png_bytes_of,
        write_dicom_with,
        write_file_at,
        write_multiframe_dicom,
        write_short_voi_lut_dicom,
    )

    src = sorted((phantom_dir / "images").rglob("*.png"))
    root.mkdir()
    shutil.copy(src[0], root / "good.png")
    write_dicom(root / "good.dcm", RAMP)
    shutil.copy(pydicom.data.get_testdata_file("examples_jpeg2k.dcm"), root / "examples_jpeg2k.dcm")  # YBR_RCT
    write_dicom(root / "window_zero.dcm", RAMP, window=(1000, 0))
    write_dicom(root / "window_negative.dcm", RAMP, window=(1000, -5))
    write_dicom_with(root / "slope_text.dcm", (0x00281053, "DS", ["x.y"]), (0x00281052, "DS", ["0"]))
    write_short_voi_lut_dicom(root / "short_voi_lut.dcm")
    write_multiframe_dicom(root / "cine.dcm")
    for name, path in bombs.items():
        shutil.copy(path, root / name)
    with open(os.fsencode(root) + b"/caf\xe9_latin1.png", "wb") as fh:
        fh.write(src[1].read_bytes())
    deep = make_deep_folder(root, 990)  # ~2 KB of path: deep, but within the system's limit
    write_file_at(root, ["d"] * 990 + ["deep.png"], src[2].read_bytes())
    make_deep_folder(root, 24, name="x" * 200)  # ~4.8 KB of path: longer than PATH_MAX
    write_file_at(root, ["x" * 200] * 24 + ["too_deep.png"], src[3].read_bytes())
    os.mkfifo(root / "pipe.png")
    os.symlink(root / "nowhere.png", root / "dangling.png")
    os.symlink(root / "loop_b.png", root / "loop_a.png")
    os.symlink(root / "loop_a.png", root / "loop_b.png")
    os.symlink(".", root / "self_folder")  # a folder link inside: not followed, nothing to report
    outside = root.parent / "outside.png"
    shutil.copy(src[4], outside)
    os.symlink(outside, root / "link_out.png")
    os.symlink("/etc/passwd", root / "passwd")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 200
    (root / "transparent.png").write_bytes(png_bytes_of(rgba))
    (root / "constant.png").write_bytes(png_bytes_of(np.full((32, 32), 77, np.uint8)))
    with_inf = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    with_inf[3, 4] = np.inf
    Image.fromarray(with_inf, "F").save(root / "one_inf.tiff")
    Image.fromarray(np.full((8, 8), np.nan, np.float32), "F").save(root / "all_nan.tiff")
    assert deep.is_dir()
    return root


EXPECTED_SKIPS = {  # file name -> words its reason must hold
    "window_zero.dcm": ["invalid DICOM header", "Window Width", "[ValueError]"],
    "window_negative.dcm": ["invalid DICOM header", "[ValueError]"],
    "slope_text.dcm": ["invalid DICOM header"],
    "short_voi_lut.dcm": ["invalid DICOM header", "[struct.error]"],
    "cine.dcm": ["multi-frame DICOM: 3 frames"],
    "bomb.png": ["too large", "[PIL.DecompressionBombError]"],
    "big16.png": ["too large", "13000 x 13000"],
    "caf\\xe9_latin1.png": ["file name not UTF-8", "[UnicodeEncodeError]"],
    "pipe.png": ["not a regular file", "FIFO"],
    "dangling.png": ["dangling symbolic link"],
    "loop_a.png": ["symbolic link loop"],
    "loop_b.png": ["symbolic link loop"],
    "link_out.png": ["symbolic link out of the folder", "--follow-links"],
    "passwd": ["symbolic link out of the folder", "/etc/passwd"],
    "transparent.png": ["fully transparent"],
    "constant.png": ["constant image", "every pixel is 77"],
    "all_nan.tiff": ["constant image"],
    "x" * 200: ["folder path too long", "its files were not read"],
}


@pytest.fixture
def hostile_folder(tmp_path, phantom_dir, bombs):
    from tests.store.hostile_files import remove_tree

    yield _hostile_folder(tmp_path / "hostile", phantom_dir, bombs)
    remove_tree(tmp_path / "hostile")  # pytest's own clean-up cannot remove a folder 990 levels deep


def test_hostile_folder_ingests_to_completion_with_every_bad_file_reported(project, hostile_folder) -> None:
    folder = hostile_folder
    report = ingest_folder(project.db, folder, project.classes)

    added = sorted(Path(p).name for p in project.db.images()["path"])
    assert added == ["deep.png", "examples_jpeg2k.dcm", "good.dcm", "good.png", "one_inf.tiff"]
    reasons = {Path(p).name: r for p, r in report.skipped}
    assert set(reasons) == set(EXPECTED_SKIPS)
    for name, words in EXPECTED_SKIPS.items():
        for word in words:
            assert word in reasons[name], (name, reasons[name])
    assert [Path(p).name for p, _ in report.warnings] == ["one_inf.tiff"]
    assert "1 of 1024 pixels are not finite" in report.warnings[0][1]
    assert project.db.summary()["skipped"] == len(EXPECTED_SKIPS)
    stored = project.db.skipped()
    assert any("caf\\xe9_latin1.png" in p for p in stored["path"])  # the name's bytes, shown, not lost

    again = ingest_folder(project.db, folder, project.classes)  # a re-run does not count old skips again
    assert again.added == 0 and again.already_known == 5 and len(again.skipped) == len(EXPECTED_SKIPS)
    assert project.db.summary()["skipped"] == len(EXPECTED_SKIPS)


def test_links_out_of_the_folder_are_followed_only_when_asked(project, phantom_dir, tmp_path) -> None:
    folder = tmp_path / "linked"
    folder.mkdir()
    src = sorted((phantom_dir / "images").rglob("*.png"))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(src[0], outside / "a.png")
    shutil.copy(src[1], outside / "b.png")
    os.symlink(outside / "a.png", folder / "a_link.png")
    os.symlink(outside, folder / "more")
    os.symlink(folder, outside / "back")  # followed, this would lead round and round
    first = ingest_folder(project.db, folder, project.classes)
    assert first.added == 0 and {Path(p).name for p, _ in first.skipped} == {"a_link.png", "more"}

    followed = ingest_folder(project.db, folder, project.classes, follow_links=True)
    assert followed.added == 2
    assert sorted(project.db.images()["path"]) == [str(outside / "a.png"), str(outside / "b.png")]
    assert any("symbolic link loop" in r for _, r in followed.skipped)
    assert project.db.summary()["skipped"] == 1  # the link skips of the first run are settled, the loop stays


def test_pixel_cap_is_configurable(project, phantom_dir, monkeypatch) -> None:
    report = ingest_folder(project.db, phantom_dir / "images", project.classes, max_pixels=64 * 64 - 1)
    assert report.added == 0 and all("too large" in r for _, r in report.skipped)
    monkeypatch.setenv("CXR_AL_MAX_PIXELS", str(64 * 64))
    assert ingest_folder(project.db, phantom_dir / "images", project.classes).added == 40
    assert project.db.summary()["skipped"] == 0  # ingested now: their old skips are gone


def test_interrupted_ingest_keeps_the_files_it_finished(project, phantom_dir, monkeypatch) -> None:
    import store.ingest as ingest_module

    real_read = ingest_module.read_image
    calls = []

    def read_then_interrupt(path, **kwargs):
        calls.append(path)
        if len(calls) == 7:
            raise KeyboardInterrupt  # Ctrl-C while the 7th file decodes
        return real_read(path, **kwargs)

    monkeypatch.setattr(ingest_module, "read_image", read_then_interrupt)
    monkeypatch.setattr(ingest_module, "COMMIT_SECONDS", 3600.0)  # nothing committed before the interruption
    with pytest.raises(KeyboardInterrupt):
        ingest_folder(project.db, phantom_dir / "images", project.classes, labels_from="folders",
                      test_fraction=0.2, seed=1)
    images = project.db.images()
    assert sorted(images["path"]) == sorted(str(p.resolve()) for p in calls[:6])
    assert len(project.db.oracle_labels()) == 6
    assert project.db.events("ingest")["payload"].str.contains('"interrupted": true').any()

    monkeypatch.setattr(ingest_module, "read_image", real_read)
    rest = ingest_folder(project.db, phantom_dir / "images", project.classes, labels_from="folders",
                         test_fraction=0.2, seed=1)
    assert rest.already_known == 6 and rest.added == 34 and len(project.db.images()) == 40


def test_a_killed_ingest_keeps_what_it_committed(project, phantom_dir, tmp_path) -> None:
    """kill -9 after 10 decoded files, committing after every file: those 10 files are in the project."""
    import subprocess
    import sys

    script = f"""
import os, signal
import store.ingest as m
from store.db import ProjectDB
m.COMMIT_SECONDS = 0.0
real, n = m.read_image, [0]
def read(path, **kw):
    n[0] += 1
    if n[0] == 11:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, **kw)
m.read_image = read
m.ingest_folder(ProjectDB({str(project.db.path)!r}), {str(phantom_dir / "images")!r}, ["Normal", "Consolidation",
                "GroundGlass", "Interstitial"], labels_from="folders")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert proc.returncode == -9
    assert len(project.db.images()) == 10


def test_pydicom_test_files_ingest_without_a_traceback(project, tmp_path) -> None:
    """pydicom's bundled test files (odd encodings, every compression, broken headers, no pixels) each
    become an image, a duplicate or a skip with a reason."""
    import pydicom

    folder = tmp_path / "pydicom_files"
    shutil.copytree(Path(pydicom.__file__).parent / "data" / "test_files", folder)
    report = ingest_folder(project.db, folder, project.classes)
    names = {Path(p).name for p in project.db.images()["path"]}
    assert {"MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
            "SC_rgb_jpeg_gdcm.dcm", "examples_jpeg2k.dcm", "GDCMJ2K_TextGBR.dcm", "JPEG2000.dcm"} <= names
    reasons = dict((Path(p).name, r) for p, r in report.skipped)
    assert "multi-frame" in reasons["examples_ybr_color.dcm"] and "no image" in reasons["rtplan.dcm"]
    assert all(r and "unexpected error" not in r for r in reasons.values()), reasons
