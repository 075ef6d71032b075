"""Ingest a folder of radiographs: hash, decode check, labels from folders or CSV, a held-out test split.

No file stops an ingest: whatever keeps one from becoming an image (unreadable, undecodable, too large,
constant, a FIFO, a dangling or looping link, a link out of the folder, a name that is not UTF-8, a path
longer than the system allows ...) is recorded as a skip with the reason and the exception class. Only
problems with the project itself (unknown class names, a busy or broken database) stop it. Finished files
are committed as the run goes, so an interrupted ingest keeps them.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import stat
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from store.db import ProjectDB
from store.errors import CxrAlError
from store.groups import (
    PSEUDONYM_SECRET,
    choose_grouped_test_split,
    group_key,
    group_splits,
    patient_identifier,
    pseudonym,
    read_dicom_identifiers,
)
from store.images import ImageInfo, max_pixels_limit, read_image

CHUNK = 500  # most files per transaction
COMMIT_SECONDS = 1.0  # longest wait between commits: a killed ingest loses at most this much finished work
SIDE_FILES = {".csv", ".txt", ".json", ".md", ".yaml", ".yml", ".xml", ".html", ".pdf"}


@dataclass
class IngestReport:
    """What an ingest run did, for the CLI summary and the UI."""

    added: int = 0
    already_known: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, path it duplicates)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    labeled: int = 0
    test: int = 0
    labels_without_image: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, what decoding had to repair)
    patients: set[str] = field(default_factory=set)  # pseudonyms of the patients of the added images
    without_group: int = 0  # added images with neither a patient nor a study

    def as_dict(self) -> dict:
        return {"added": self.added, "already_known": self.already_known, "duplicates": len(self.duplicates),
                "skipped": len(self.skipped), "labeled": self.labeled, "test": self.test,
                "labels_without_image": self.labels_without_image, "per_class": self.per_class,
                "patients": len(self.patients), "without_group": self.without_group,
                "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped],
                "warnings": [{"path": p, "warning": w} for p, w in self.warnings]}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def printable_path(path: str | Path) -> str:
    """A path as text that can be stored and printed: bytes of a name that are not UTF-8 shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")]
    return next((name for test, name in kinds if test(mode)), f"file type {stat.S_IFMT(mode):o}")


def _os_reason(exc: OSError, path: str, then: str = "") -> str:
    if exc.errno == errno.ENAMETOOLONG:
        text = f"path too long: {len(os.fsencode(path))} bytes, more than the system allows{then}; move it higher up"
    else:
        text = f"unreadable: {exc.strerror or exc}{then}"
    return f"{text} [{type(exc).__name__}]"


def _walk(root: Path, follow_links: bool = False) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Every regular file below root as (path as walked, resolved path), in a stable order, hidden files and
    folders left out; and (path, reason) for what is there but cannot be read as a file: FIFOs and devices,
    dangling links, link loops, links leading out of root (unless follow_links), folders that cannot be listed.

    Iterative, one folder listing open at a time: a folder 1,000 levels deep is no deeper for it than one.
    """
    root_s = str(root)
    files: list[tuple[Path, str]] = []
    problems: list[tuple[str, str]] = []
    visited: set[tuple[int, int]] = set()

    def listing(folder: str) -> list[os.DirEntry] | None:
        try:
            with os.scandir(folder) as it:
                return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as exc:
            problems.append((folder, "folder " + _os_reason(exc, folder, ", its files were not read")))
            return None

    def inside(real: str) -> bool:
        return real == root_s or real.startswith(root_s.rstrip(os.sep) + os.sep)

    top = os.stat(root_s)
    visited.add((top.st_dev, top.st_ino))
    stack = [(iter(listing(root_s) or []), True)]  # (entries left, folder reached without links)
    while stack:
        entries, real_folder = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        path = entry.path
        try:
            if entry.is_symlink():
                target = os.readlink(path)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    problems.append((path, f"dangling symbolic link: its target {target} does not exist"))
                    continue
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        problems.append((path, f"symbolic link loop: {target} leads back to itself"))
                    else:
                        problems.append((path, _os_reason(exc, path)))
                    continue
                real = os.path.realpath(path)
                if not follow_links and not inside(real):
                    problems.append((path, f"symbolic link out of the folder: it points to {real}; "
                                           "ingest with --follow-links to include it"))
                elif stat.S_ISDIR(st.st_mode):
                    if not follow_links:
                        continue  # a link to a folder inside: its files are ingested where they are
                    if (st.st_dev, st.st_ino) in visited:
                        problems.append((path, f"symbolic link loop: it leads to {real}, a folder already "
                                               "walked; not followed again"))
                        continue
                    visited.add((st.st_dev, st.st_ino))
                    stack.append((iter(listing(path) or []), False))
                elif stat.S_ISREG(st.st_mode):
                    files.append((Path(path), real))
                else:
                    problems.append((path, f"not a regular file: a link to {_file_kind(st.st_mode)}"))
            elif entry.is_dir(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                visited.add((st.st_dev, st.st_ino))
                stack.append((iter(listing(path) or []), real_folder))
            elif entry.is_file(follow_symlinks=False):
                files.append((Path(path), path if real_folder else os.path.realpath(path)))
            else:
                problems.append((path, f"not a regular file: {_file_kind(entry.stat(follow_symlinks=False).st_mode)}"))
        except OSError as exc:
            if entry.is_dir(follow_symlinks=False):
                problems.append((path, "folder " + _os_reason(exc, path, ", its files were not read")))
            else:
                problems.append((path, _os_reason(exc, path)))
    return files, problems


FILE_COLUMNS = ("file", "path", "filename", "image")  # accepted names of a CSV's image column, first found wins
LABEL_COLUMNS = ("label", "class", "finding")
PATIENT_COLUMNS = ("patient_id", "patient", "patientid", "subject_id", "subject", "participant_id", "participant")
STUDY_COLUMNS = ("study_id", "study", "study_uid", "studyinstanceuid", "accession_number", "accession")


def _csv_by_path(csv_path: Path, images_dir: Path, kind: str, fields: dict[str, tuple[str, ...]],
                 required: str) -> dict[Path, dict[str, str]]:
    """Rows of a CSV keyed by the image they name (its file column, relative to images_dir): for each field,
    the value in the first of its accepted column names (case-insensitive) the CSV has; the required field's
    column must be there. Empty values are left out, rows with none dropped."""
    if not csv_path.is_file():
        raise CxrAlError(f"{kind} file {csv_path} not found")
    try:
        csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CxrAlError(f"{csv_path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 "
                         "(e.g. 'CSV UTF-8' in a spreadsheet) and run again") from exc
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = {c.lower().strip(): c for c in (reader.fieldnames or [])}
        found = {name: next((cols[c] for c in accepted if c in cols), None)
                 for name, accepted in {"file": FILE_COLUMNS, **fields}.items()}
        if found["file"] is None or found[required] is None:
            raise CxrAlError(f"{csv_path}: needs a 'file' and a '{fields[required][0]}' column (or "
                             f"{'/'.join(FILE_COLUMNS[1:])}; {'/'.join(fields[required][1:])}), "
                             f"found {reader.fieldnames}")
        out: dict[Path, dict[str, str]] = {}
        for row in reader:
            values = {name: (row.get(col) or "").strip() for name, col in found.items() if col is not None}
            f = values.pop("file")
            values = {k: v for k, v in values.items() if v}
            if not f or not values:
                continue
            p = Path(f)
            out[(p if p.is_absolute() else images_dir / p).resolve()] = values
    return out


def read_label_csv(csv_path: Path, images_dir: Path) -> dict[Path, str]:
    """Labels from a CSV with columns file (or path/filename/image) and label (or class/finding); paths
    relative to images_dir."""
    rows = _csv_by_path(csv_path, images_dir, "labels", {"label": LABEL_COLUMNS}, "label")
    return {p: row["label"] for p, row in rows.items()}


def read_group_csv(csv_path: Path, images_dir: Path) -> dict[Path, dict[str, str]]:
    """Patient (and study) of images from a CSV: columns file (or path/filename/image), patient_id (or patient/
    patientid/subject_id/subject/participant_id/participant) and optionally study_id (or study/study_uid/
    studyinstanceuid/accession_number/accession). Returns path -> {"patient": ..., "study": ...}; rows with
    an empty or anonymous patient are images without a group unless they name a study."""
    return _csv_by_path(csv_path, images_dir, "groups", {"patient": PATIENT_COLUMNS, "study": STUDY_COLUMNS},
                        "patient")


def _canonical_labels(raw: dict[Path, str], classes: list[str]) -> dict[Path, str]:
    lookup = {c.lower(): c for c in classes}
    unknown = sorted({lab for lab in raw.values() if lab.lower() not in lookup})
    if unknown:
        raise CxrAlError(
            f"labels name classes this project does not have: {', '.join(map(printable_path, unknown))}; "
            f"project classes: {', '.join(classes)}. Rename the folders/CSV labels or create the project "
            "with those classes. Nothing was ingested.")
    return {p: lookup[lab.lower()] for p, lab in raw.items()}


def choose_test_split(paths: list[str], labels: list[str | None], fraction: float, seed: int,
                      groups: list[str] | None = None, assigned: dict[str, str] | None = None) -> set[str]:
    """Stratified held-out test set: round(fraction * n) images of each class, only among labeled ones.

    With groups (store.groups.group_key of each path), drawn by group instead, no group in both splits, and
    images of groups in `assigned` (group -> split already in the project) follow their group."""
    if groups is not None:
        return choose_grouped_test_split(paths, labels, groups, fraction, seed, assigned)
    if fraction <= 0:
        return set()
    by_class: dict[str, list[str]] = defaultdict(list)
    for p, lab in zip(paths, labels, strict=True):
        if lab is not None:
            by_class[lab].append(p)
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for lab in sorted(by_class):
        members = by_class[lab]
        n_test = int(np.floor(fraction * len(members) + 0.5))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)  # every class keeps pool and test images
        else:
            n_test = 0
        for i in rng.permutation(len(members))[:n_test]:
            chosen.add(members[i])
    return chosen


def _exception_class(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__.split(".")[0]
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def skip_reason(exc: Exception, path: str | Path) -> str:
    """Why a file was skipped, from the error that stopped it: the message without the path, and the class of
    the exception underneath ("too large: ... [PIL.DecompressionBombError]")."""
    text = " ".join(str(exc).split())
    for prefix in {f"{path}: ", f"{printable_path(path)}: "}:
        if text.startswith(prefix):
            text = text[len(prefix):]
    if isinstance(exc, CxrAlError):
        cause = exc.__cause__
        return f"{text} [{_exception_class(cause)}]" if cause is not None else text
    return f"unexpected error: {text} [{_exception_class(exc)}]"


class _Commits:
    """Finished files waiting for their commit: committed every CHUNK files or COMMIT_SECONDS, and at the end.

    A commit that fails for a reason other than the project (one row the database refuses) is retried file by
    file and the refused file becomes a skip; only a failure to record even that stops the ingest.
    """

    def __init__(self, db: ProjectDB, labels_as: str, report: IngestReport):
        self.db, self.labels_as, self.report = db, labels_as, report
        self.rows: list[tuple[dict, str | None]] = []
        self.skips: list[tuple[str, str]] = []
        self.counts: Counter[str] = Counter()
        self.last = time.monotonic()
        self.failed = False  # the project refused a commit: do not try again on the way out

    def add(self, row: dict, label: str | None) -> None:
        self.rows.append((row, label))

    def skip(self, path: str | Path, reason: str) -> None:
        self.skips.append((printable_path(path), reason))

    def due(self) -> bool:
        return len(self.rows) + len(self.skips) >= CHUNK or time.monotonic() - self.last >= COMMIT_SECONDS

    def commit(self) -> None:
        """Write what is pending; pending files stay pending until their commit returns (Ctrl-C mid-commit
        leaves them for the commit on the way out)."""
        self.last = time.monotonic()
        if not self.rows and not self.skips:
            return
        try:
            self._write(self.rows, self.skips)
            self.rows, self.skips = [], []
            return
        except CxrAlError:
            self.failed = True  # busy or broken project: nothing one file did, and no use retrying
            raise
        except Exception:
            pass
        self.failed = True  # until the file-by-file retry returns
        while self.rows:
            row = self.rows[0]
            try:
                self._write([row], [])
            except CxrAlError:
                raise
            except Exception as exc:
                self._write([], [(row[0]["path"], "not recorded: the project database refused it: "
                                                  + skip_reason(exc, row[0]["path"]))])
            self.rows.pop(0)
        self._write([], self.skips)
        self.skips = []
        self.failed = False

    def _write(self, rows: list[tuple[dict, str | None]], skips: list[tuple[str, str]]) -> None:
        labeled = [(r["path"], lab) for r, lab in rows if lab is not None]
        as_oracle = self.labels_as == "oracle"
        self.db.add_ingest_batch([r for r, _ in rows], oracle=labeled if as_oracle else (),
                                 labels=() if as_oracle else labeled, skipped=skips)
        self.report.added += len(rows)
        self.report.test += sum(1 for r, _ in rows if r["split"] == "test")
        self.report.patients.update(r["patient_key"] for r, _ in rows if r.get("patient_key"))
        self.report.without_group += sum(1 for r, _ in rows if not r.get("patient_key") and not r.get("study_uid"))
        self.report.skipped.extend(skips)
        self.counts.update(lab for _, lab in labeled)


def _hashed_row(walked: Path, recorded: str) -> tuple[str, dict]:
    """(SHA-256, the start of its images row) of one file; raises when its name or content cannot be stored."""
    try:
        recorded.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CxrAlError("file name not UTF-8: the project database stores names as UTF-8 text; "
                         "rename the file") from exc
    digest, size = _hash_regular_file(walked)
    return digest, {"path": recorded, "sha256": digest, "size_bytes": size}


def _hash_regular_file(path: Path) -> tuple[str, int]:
    """(SHA-256, size) of a regular file; opened without blocking, so a FIFO put in its place cannot hang us."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CxrAlError(f"not a regular file: {_file_kind(st.st_mode)}")
        h = hashlib.sha256()
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest(), st.st_size


def _decode_checked(walked: Path, max_pixels: int) -> tuple[np.ndarray, ImageInfo]:
    """Decoded pixels and info; a constant image (nothing to label) is refused like an undecodable one."""
    grey, info = read_image(walked, max_pixels=max_pixels)
    lo, hi = int(grey.min()), int(grey.max())
    if lo == hi:
        after = "decoding and the DICOM window" if info.format == "dicom" else "decoding"
        raise CxrAlError(f"constant image: every pixel is {lo} after {after}, there is nothing to see")
    return grey, info


def ingest_folder(db: ProjectDB, images_dir: Path | str, classes: list[str], *, labels_from: str | None = None,
                  labels_as: str = "oracle", test_fraction: float = 0.2, seed: int = 0,
                  progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None,
                  follow_links: bool = False, max_pixels: int | None = None,
                  groups_from: str | Path | None = None) -> IngestReport:
    """Add every new, readable, non-duplicate image below images_dir to the project; skip the rest with a reason.

    labels_from: None, "folders" (first folder below images_dir is the class) or a CSV path.
    labels_as: "oracle" (hidden ground truth for simulation and test metrics) or "labels"
    (real labels by annotator 'import'). test_fraction reserves a stratified test split among
    the new files that have ground truth (drawn before decoding, so every commit already holds final
    splits); test images never enter the labeling queue. follow_links: also ingest files that symbolic
    links lead to outside images_dir. max_pixels: refuse larger images from their header (default
    store.images.max_pixels_limit()). Finished files are committed as the run goes; an interrupted run
    keeps them, and a re-run picks up the rest.

    Every image is recorded with its patient (a keyed pseudonym, never the raw identifier) and study: from
    groups_from, a CSV (see read_group_csv), else from the DICOM header's PatientID and StudyInstanceUID; DICOM
    study/series/SOP instance UIDs are always kept. When any image has a patient or study, the test split is
    drawn by patient (store.groups.choose_grouped_test_split): no patient in both splits, and a new image of
    a patient already in the project joins that patient's split.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise CxrAlError(f"{images_dir}: no such folder of images")
    if labels_as not in ("oracle", "labels"):
        raise CxrAlError("--as must be 'oracle' or 'labels'")
    if not 0.0 <= test_fraction < 1.0:
        raise CxrAlError("--test-fraction must be in [0, 1)")
    cap = max_pixels_limit() if max_pixels is None else int(max_pixels)
    images_dir = images_dir.resolve()
    files, problems = _walk(images_dir, follow_links=follow_links)

    raw_labels: dict[Path, str] = {}
    if labels_from == "folders":
        for walked, recorded in files:
            rel = walked.relative_to(images_dir)
            if len(rel.parts) > 1:
                raw_labels[Path(recorded)] = rel.parts[0]
    elif labels_from:
        raw_labels = read_label_csv(Path(labels_from), images_dir)
    labels = _canonical_labels(raw_labels, classes)  # raises before anything is written
    given_groups = read_group_csv(Path(groups_from), images_dir) if groups_from else {}

    known_paths, known_hashes = db.known_paths_and_hashes()
    candidates = list(dict.fromkeys(recorded for walked, recorded in files if recorded not in known_paths
                                    and walked.suffix.lower() not in SIDE_FILES))
    identify = _Identifiers(db, dict((recorded, walked) for walked, recorded in reversed(files)), given_groups)
    test_paths = _test_split(db, identify, candidates, [labels.get(Path(p)) for p in candidates], test_fraction,
                             seed)

    report = IngestReport()
    commits = _Commits(db, labels_as, report)
    for path, reason in problems:
        commits.skip(path, reason)
    seen_paths: set[str] = set()
    seen_hashes: dict[str, str] = {}
    if on_total:
        on_total(len(files))
    try:
        for walked, recorded in files:
            if commits.due():
                commits.commit()
            if progress:
                progress(1)
            if recorded in known_paths:
                report.already_known += 1
                continue
            if recorded in seen_paths:
                continue  # a link inside the folder to a file inside it: one file
            seen_paths.add(recorded)
            if walked.suffix.lower() in SIDE_FILES:
                continue  # label sheets and notes beside the images are not images; not worth a warning
            try:
                digest, row = _hashed_row(walked, recorded)
                if digest in known_hashes or digest in seen_hashes:
                    report.duplicates.append((printable_path(recorded),
                                              seen_hashes.get(digest, "an image already in the project")))
                    continue
                _, info = _decode_checked(walked, cap)
            except OSError as exc:
                commits.skip(recorded, _os_reason(exc, recorded))
                continue
            except Exception as exc:  # whatever one file does, the ingest goes on
                commits.skip(recorded, skip_reason(exc, walked))
                continue
            seen_hashes[digest] = recorded
            row.update(width=info.width, height=info.height, format=info.format, modality=info.modality,
                       split="test" if recorded in test_paths else "pool", **identify(recorded))
            report.warnings.extend((recorded, note) for note in info.notes)
            commits.add(row, labels.get(Path(recorded)))
        commits.commit()
    except BaseException:
        if not commits.failed:  # interrupted (Ctrl-C, a project error): keep what is finished
            try:
                commits.commit()
                _log_run(db, images_dir, report, interrupted=True)
            except Exception:
                pass  # the error already on its way says more
        raise
    decoded = set(seen_hashes.values())
    report.labels_without_image = sum(1 for p in labels if str(p) not in decoded and str(p) not in known_paths)
    report.labeled = sum(commits.counts.values())
    report.per_class = dict(sorted(commits.counts.items()))
    db.settle_skipped(printable_path(images_dir), [p for p, _ in report.skipped])
    _log_run(db, images_dir, report, interrupted=False)
    return report


class _Identifiers:
    """patient_key, study_uid, series_uid and sop_uid of a file to ingest, read once and remembered: the groups
    CSV's patient (and its study where the DICOM header has none) over the header's PatientID."""

    def __init__(self, db: ProjectDB, walked: dict[str, Path], given: dict[Path, dict[str, str]]):
        self.db, self.walked, self.given = db, walked, given
        self.known: dict[str, dict[str, str | None]] = {}
        self.key: bytes | None = None

    def __call__(self, recorded: str) -> dict[str, str | None]:
        if recorded not in self.known:
            header = read_dicom_identifiers(self.walked.get(recorded, recorded))
            given = self.given.get(Path(recorded), {})
            patient = patient_identifier(given.get("patient")) or (header.patient_id if header else None)
            if patient and self.key is None:
                self.key = self.db.secret(PSEUDONYM_SECRET)
            self.known[recorded] = {
                "patient_key": pseudonym(patient, self.key) if patient else None,
                "study_uid": (header.study_uid if header else None) or given.get("study"),
                "series_uid": header.series_uid if header else None, "sop_uid": header.sop_uid if header else None}
        return self.known[recorded]


def _test_split(db: ProjectDB, identify: _Identifiers, candidates: list[str], labels: list[str | None],
                fraction: float, seed: int) -> set[str]:
    """The new files that go to the test split: by patient when the project or these files have patients or
    studies (their headers are read first), else per image as before groups existed."""
    existing = db.image_groups()
    existing = existing[existing["patient_key"].notna() | existing["study_uid"].notna()]
    has_labels = fraction > 0 and any(lab is not None for lab in labels)
    if existing.empty and not has_labels:
        return set()  # no test split to draw, and no patient already in one to follow
    groups = [group_key(identify(p)["patient_key"], identify(p)["study_uid"], p) for p in candidates]
    if existing.empty and all(g.startswith("image:") for g in groups):
        return choose_test_split(candidates, labels, fraction, seed)
    assigned = group_splits([group_key(k, s, p) for k, s, p in
                             zip(existing["patient_key"], existing["study_uid"], existing["path"], strict=True)],
                            list(existing["split"]))
    return choose_test_split(candidates, labels, fraction, seed, groups=groups, assigned=assigned)


def _log_run(db: ProjectDB, images_dir: Path, report: IngestReport, *, interrupted: bool) -> None:
    db.log_event("ingest", None, folder=printable_path(images_dir), added=report.added,
                 skipped=len(report.skipped), duplicates=len(report.duplicates),
                 already_known=report.already_known, test=report.test, interrupted=interrupted)
