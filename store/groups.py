"""Who an image belongs to: patient and study identifiers, their keyed pseudonyms, and a test split by patient.

Images of one patient look alike (same anatomy, same implants, often the same day's exposure), so a test split
drawn per image lets a model be scored on patients it was trained on. The split is drawn by group instead: the
patient when known, else the study, else the image alone. Raw patient identifiers are never stored: the
project keeps an HMAC-SHA256 pseudonym under its own secret key (store.db.ProjectDB.secret), the same for the
same identifier whether it came from a DICOM header or a CSV.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PSEUDONYM_SECRET = "pseudonym"  # name of the project secret that keys patient pseudonyms
PSEUDONYM_CHARS = 20  # hex characters kept of the HMAC: 80 bits, no collisions in any real archive
# PatientID values that name nobody: anonymisers write these, and grouping on them would make one huge patient
ANONYMOUS_IDS = frozenset({"", "anonymous", "anonymized", "anonymised", "anon", "removed", "unknown", "none",
                           "null", "n/a", "-"})
SPLIT_FOLDS = 20  # the grouped split takes whole folds of a StratifiedGroupKFold: fractions in steps of 1/20
DICOM_IDENTIFIER_TAGS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@dataclass(frozen=True)
class DicomIdentifiers:
    """Identifiers from one DICOM header (None where absent or empty)."""

    patient_id: str | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None


def patient_identifier(raw: object) -> str | None:
    """A patient identifier as given, stripped; None for an empty or anonymised one ("", "ANONYMOUS" ...)."""
    text = "" if raw is None else str(raw).strip()
    return None if text.lower() in ANONYMOUS_IDS else text


def pseudonym(identifier: str, key: bytes) -> str:
    """The project's keyed pseudonym of an identifier (hex HMAC-SHA256): stable, not reversible without key."""
    return hmac.new(key, identifier.encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_CHARS]


def read_dicom_identifiers(path: Path | str) -> DicomIdentifiers | None:
    """PatientID and study/series/SOP instance UIDs from a DICOM Part 10 header (the pixels are not read);
    None for a file that is not DICOM or cannot be read (ingest's decoding says why, if it matters)."""
    import pydicom

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            head = fh.read(132)
            if len(head) < 132 or head[128:132] != b"DICM":
                return None
            fh.seek(0)
            with warnings.catch_warnings():  # odd header values are decoding's to report, not ours
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=list(DICOM_IDENTIFIER_TAGS))
            values = [str(ds.get(tag, "") or "").strip() or None for tag in DICOM_IDENTIFIER_TAGS]
    except Exception:  # a header too broken to read is not a group; decoding reports the file
        return None
    return DicomIdentifiers(patient_identifier(values[0]), *values[1:])


def group_key(patient_key: str | None, study_uid: str | None, path: str) -> str:
    """What keeps images together in a split: the patient, else the study, else the image alone."""
    if isinstance(patient_key, str) and patient_key:
        return f"patient:{patient_key}"
    if isinstance(study_uid, str) and study_uid:
        return f"study:{study_uid}"
    return f"image:{path}"


def group_splits(groups: Sequence[str], splits: Sequence[str]) -> dict[str, str]:
    """The split each group of existing images is in (the split of most of its images; a tie goes to the
    pool), for new images of a known patient to follow."""
    counts: dict[str, Counter[str]] = {}
    for g, s in zip(groups, splits, strict=True):
        counts.setdefault(g, Counter())[s] += 1
    return {g: ("test" if c["test"] > c["pool"] else "pool") for g, c in counts.items()}


def choose_grouped_test_split(paths: Sequence[str], labels: Sequence[str | None], groups: Sequence[str],
                              fraction: float, seed: int, assigned: Mapping[str, str] | None = None) -> set[str]:
    """Held-out test paths drawn by group, stratified by label as far as the groups allow; no group is split.

    Images of a group in `assigned` (group -> split of the images already in the project) follow it. Among the
    other groups, those with at least one label are dealt into SPLIT_FOLDS folds by scikit-learn's
    StratifiedGroupKFold and round(fraction * folds) folds, picked at random, become the test split, with
    every image of their groups (unlabeled ones too: a patient is never in both splits)."""
    assigned = assigned or {}
    chosen = {p for p, g in zip(paths, groups, strict=True) if assigned.get(g) == "test"}
    free = [(p, lab, g) for p, lab, g in zip(paths, labels, groups, strict=True) if g not in assigned]
    labeled = [(lab, g) for _, lab, g in free if lab is not None]
    n_groups = len({g for _, g in labeled})
    if fraction <= 0 or n_groups < 2:
        return chosen
    from sklearn.model_selection import (
        StratifiedGroupKFold,  # 3-4 s to import: only when a split is drawn
    )

    y = [lab for lab, _ in labeled]
    g = [grp for _, grp in labeled]
    folds = min(SPLIT_FOLDS, n_groups, max(Counter(y).values()))  # scikit-learn: no more folds than that
    if folds < 2:  # a single image per class: too few to stratify, only to keep groups whole
        y, folds = [""] * len(y), min(SPLIT_FOLDS, n_groups)
    n_test = min(max(int(np.floor(fraction * folds + 0.5)), 1), folds - 1)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "the least populated class has fewer members than n_splits": as expected
        warnings.simplefilter("ignore", UserWarning)
        fold_rows = [rows for _, rows in splitter.split(np.zeros((len(y), 1)), y, g)]
    picked = np.random.default_rng(seed).permutation(folds)[:n_test]
    test_groups = {g[i] for k in picked for i in fold_rows[k]}
    return chosen | {p for p, _, grp in free if grp in test_groups}
