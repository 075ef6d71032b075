"""Patient and study grouping at ingest: DICOM PatientID and a CSV, pseudonyms, a test split drawn by patient."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from store.errors import CxrAlError
from store.groups import (
    PSEUDONYM_SECRET,
    choose_grouped_test_split,
    patient_identifier,
    pseudonym,
    read_dicom_identifiers,
)
from store.ingest import ingest_folder
from store.phantoms import PHANTOM_CLASSES, iter_phantoms
from store.project import init_project
from tests.conftest import write_dicom


def _dicom(path: Path, pixels: np.ndarray, patient: str, study: str) -> Path:
    """A DICOM radiograph of a given PatientID and StudyInstanceUID."""
    import pydicom

    write_dicom(path, pixels.astype(np.uint16) * 256)
    ds = pydicom.dcmread(path)
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, study, study + ".1"
    ds.save_as(path)
    return path


def _patients_in_both(project) -> set[str]:
    images = project.db.images()
    splits = images.dropna(subset=["patient_key"]).groupby("patient_key")["split"].nunique()
    return set(splits.index[splits > 1])


@pytest.fixture
def patient_folder(tmp_path: Path) -> tuple[Path, Path]:
    """48 phantom PNGs in class folders from 16 patients (3 images each, mixed classes), and a CSV naming
    each file's patient and study; every fourth row leaves the patient empty ('ANONYMOUS')."""
    root = tmp_path / "images"
    rows = []
    for i, ph in enumerate(iter_phantoms(48, seed=5, size=32)):
        (root / ph.label).mkdir(parents=True, exist_ok=True)
        rel = f"{ph.label}/{ph.image_id}.png"
        Image.fromarray(ph.pixels, "L").save(root / rel)
        rows.append({"path": rel, "Subject": f"P{i % 16:02d}", "study": f"S{i % 16:02d}-{i % 2}"})
    rows[3]["Subject"] = "ANONYMOUS"
    table = tmp_path / "groups.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "Subject", "study"])
        writer.writeheader()
        writer.writerows(rows)
    return root, table


def test_dicom_patient_ids_become_pseudonyms_and_uids_are_kept(project, tmp_path) -> None:
    data = tmp_path / "dicom"
    pixels = [ph.pixels for ph in iter_phantoms(8, seed=2, size=32)]
    for i, px in enumerate(pixels):
        (data / PHANTOM_CLASSES[i % 4]).mkdir(parents=True, exist_ok=True)
        patient = ["PID-A", "PID-B", "PID-C", ""][i % 4]
        _dicom(data / PHANTOM_CLASSES[i % 4] / f"{i}.dcm", px, patient, f"1.2.3.{i % 4}")
    Image.fromarray(pixels[0]).save(data / "plain.png")
    assert read_dicom_identifiers(data / "plain.png") is None
    header = read_dicom_identifiers(data / PHANTOM_CLASSES[0] / "0.dcm")
    assert header.patient_id == "PID-A" and header.study_uid == "1.2.3.0"

    report = ingest_folder(project.db, data, project.classes, labels_from="folders", test_fraction=0.3, seed=1)
    assert report.added == 9 and report.as_dict()["patients"] == 3
    images = project.db.images()
    dicom = images[images["format"] == "dicom"]
    assert dicom["sop_uid"].notna().all() and dicom["sop_uid"].nunique() == 8
    assert set(dicom["series_uid"]) == {f"1.2.3.{k}.1" for k in range(4)}
    key = project.db.secret(PSEUDONYM_SECRET)
    assert set(dicom["patient_key"].dropna()) == {pseudonym(p, key) for p in ("PID-A", "PID-B", "PID-C")}
    assert not any("PID" in str(v) for v in images.to_numpy().ravel())  # the raw PatientID is stored nowhere
    assert all(len(k) == 20 and int(k, 16) >= 0 for k in dicom["patient_key"].dropna())
    no_patient = dicom[dicom["patient_key"].isna()]
    assert len(no_patient) == 2 and set(no_patient["study_uid"]) == {"1.2.3.3"}  # grouped by their study
    assert images.loc[images["format"] == "png", ["patient_key", "study_uid", "sop_uid"]].isna().all().all()
    assert not _patients_in_both(project)
    assert images.groupby("study_uid")["split"].nunique().max() == 1


def test_anonymous_patient_ids_are_no_group() -> None:
    for raw in ("", "  ", "ANONYMOUS", "anonymized", "Unknown", None):
        assert patient_identifier(raw) is None
    assert patient_identifier(" 0042 ") == "0042"
    assert pseudonym("0042", b"k" * 32) == pseudonym("0042", b"k" * 32) != pseudonym("0042", b"j" * 32)


def test_csv_groups_split_never_splits_a_patient(tmp_path, patient_folder) -> None:
    root, table = patient_folder
    for seed in range(4):
        project = init_project(tmp_path / f"p{seed}", list(PHANTOM_CLASSES), image_size=32)
        report = ingest_folder(project.db, root, project.classes, labels_from="folders", test_fraction=0.25,
                               seed=seed, groups_from=str(table))
        assert report.added == 48 and report.as_dict()["patients"] == 16 and report.without_group == 0
        assert not _patients_in_both(project), seed
        images = project.db.images()
        assert 6 <= (images["split"] == "test").sum() <= 18, seed  # a quarter of 48, in whole patients
        anonymous = images[images["patient_key"].isna()]
        assert len(anonymous) == 1 and anonymous["study_uid"].iloc[0] == "S03-1"  # its study is its group
    csv_key = project.db.secret(PSEUDONYM_SECRET)
    assert pseudonym("P00", csv_key) in set(project.db.images()["patient_key"])


def test_grouped_split_keeps_the_strata_roughly_and_whole_groups() -> None:
    rng = np.random.default_rng(0)
    paths, labels, groups = [], [], []
    for patient in range(300):
        label = ["a", "b", "c"][patient % 3] if patient % 10 else None  # every tenth patient unlabeled
        for k in range(int(rng.integers(1, 5))):
            paths.append(f"{patient}/{k}.png")
            labels.append(label)
            groups.append(f"patient:{patient}")
    for seed in range(5):
        test = choose_grouped_test_split(paths, labels, groups, 0.2, seed)
        split = {g: set() for g in groups}
        for p, g in zip(paths, groups, strict=True):
            split[g].add(p in test)
        assert all(len(s) == 1 for s in split.values())  # no patient in both
        per_class = Counter(lab for p, lab in zip(paths, labels, strict=True) if p in test)
        totals = Counter(labels)
        for label in "abc":
            assert 0.12 <= per_class[label] / totals[label] <= 0.28, (seed, label)
        assert per_class[None] == 0  # patients without any label stay in the pool
    again = choose_grouped_test_split(paths, labels, groups, 0.2, 3)
    assert again == choose_grouped_test_split(paths, labels, groups, 0.2, 3)  # seeded


def test_reingest_keeps_a_patient_in_its_split(tmp_path, patient_folder) -> None:
    root, table = patient_folder
    more = tmp_path / "more"
    rows = []
    for i, ph in enumerate(iter_phantoms(32, seed=9, size=32)):
        (more / ph.label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(ph.pixels, "L").save(more / ph.label / f"new{ph.image_id}.png")
        rows.append((f"{ph.label}/new{ph.image_id}.png", f"P{i % 20:02d}"))  # P16..P19 are new patients
    with open(tmp_path / "more.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("file", "patient_id"), *rows])
    for fraction in (0.0, 0.5):  # with or without a new test split to draw, known patients keep theirs
        project = init_project(tmp_path / f"p{fraction}", list(PHANTOM_CLASSES), image_size=32)
        ingest_folder(project.db, root, project.classes, labels_from="folders", test_fraction=0.25, seed=0,
                      groups_from=str(table))
        before = project.db.images().dropna(subset=["patient_key"]).set_index("patient_key")["split"].to_dict()
        assert set(before.values()) == {"pool", "test"}
        report = ingest_folder(project.db, more, project.classes, labels_from="folders", test_fraction=fraction,
                               seed=0, groups_from=str(tmp_path / "more.csv"))
        images = project.db.images()
        assert len(images) == 80 and report.as_dict()["patients"] == 20 and not _patients_in_both(project)
        after = images.dropna(subset=["patient_key"]).set_index("patient_key")["split"]
        assert {k: after.loc[[k]].iloc[-1] for k in before} == before
        new_patients = set(after.index) - set(before)
        assert len(new_patients) == 4
        if fraction == 0:
            assert set(after.loc[list(new_patients)]) == {"pool"}


def test_group_csv_needs_a_patient_column(project, tmp_path, patient_folder) -> None:
    root, _ = patient_folder
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nNormal/x.png,Normal\n")
    with pytest.raises(CxrAlError, match="patient_id"):
        ingest_folder(project.db, root, project.classes, groups_from=str(bad))
    with pytest.raises(CxrAlError, match="not found"):
        ingest_folder(project.db, root, project.classes, groups_from=str(tmp_path / "none.csv"))
    assert project.db.images().empty


def test_without_groups_the_split_is_per_image_as_before(project, phantom_dir) -> None:
    from store.ingest import choose_test_split

    ingest_folder(project.db, phantom_dir / "images", project.classes, labels_from="folders", test_fraction=0.2,
                  seed=0)
    images = project.db.images()
    assert images["patient_key"].isna().all()
    paths = sorted(images["path"])
    oracle = project.db.oracle_labels().merge(images, left_on="image_id", right_on="id").set_index("path")["label"]
    expected = choose_test_split(paths, [oracle[p] for p in paths], 0.2, 0)
    assert set(images.loc[images["split"] == "test", "path"]) == expected
