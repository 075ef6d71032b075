"""Export the labeled set, free of patient identifiers: CSV, Parquet, JSON Lines or an ImageFolder tree.

What leaves the project: image files named by image id with their embedded metadata removed (PNG text
and EXIF chunks, JPEG EXIF/XMP/ICC/comment segments; DICOM only as decoded PNG pixels, no header), source
paths relative to the ingest folder (or none), DICOM UIDs replaced by per-project pseudonyms (unless kept
for PACS round trips) and the patient key, which is already a keyed pseudonym. Annotators are accounts,
not patients: their names stay.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import shutil
import warnings
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image, ImageOps

from store.db import IMAGE_IDENTIFIER_COLUMNS, ProjectDB
from store.errors import CxrAlError
from store.images import is_dicom, png_bytes, read_grey

FORMATS = ("csv", "parquet", "jsonl", "imagefolder")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CONSENSUS_COLUMNS = ["image_id", "path", "sha256", "split", "label", "agreement", "n_annotators", "annotators",
                     "annotator_labels", "first_labeled_at", "last_labeled_at", "round", "seconds_spent",
                     *IMAGE_IDENTIFIER_COLUMNS]
EXPORT_COLUMNS = ["image_id", "source_path", "sha256", "split", "label", "agreement", "n_annotators", "annotators",
                  "annotator_labels", "first_labeled_at", "last_labeled_at", "round", "seconds_spent",
                  *IMAGE_IDENTIFIER_COLUMNS]
LIST_COLUMNS = ("annotators", "annotator_labels")  # lists in Parquet and JSON Lines, ';'-joined in CSV
UID_COLUMNS = ("study_uid", "series_uid", "sop_uid")
SPLIT_FOLDERS = {"pool": "train", "test": "test"}
# per-split metadata.csv for Hugging Face `imagefolder`: columns every row fills, so both splits read alike
SPLIT_METADATA_COLUMNS = ["file_name", "label", "image_id", "agreement", "n_annotators", "annotators",
                          "annotator_labels", "round", "seconds_spent", "sha256"]
MARKER = ".cxr-al-export.json"  # written into every imagefolder export: --overwrite replaces only such folders


def labeled_set(db: ProjectDB, *, split: str = "all", classes: list[str] | None = None,
                annotator: str | None = None, agreement: str | None = None, packed: bool = True) -> pd.DataFrame:
    """One row per labeled image: consensus label, who labeled it, when, in which round, agreement status.

    The consensus is the label most current annotators gave; a tie goes to the most recent label
    and the image is marked 'disagree'. Agreement: single | agree | disagree. packed: annotators as
    'alice;bob' and their labels as 'alice=Normal;bob=GroundGlass' (for screens); otherwise two aligned
    lists (annotators, and the label each gave). `path` is the recorded (absolute) source path: for use
    inside the project, never for export (see export_table).
    """
    if split not in ("all", "pool", "test"):
        raise CxrAlError("--split must be all, pool or test")
    labels = db.current_labels()
    if split != "all":
        labels = labels[labels["split"] == split]
    if annotator:
        keep = labels.loc[labels["annotator"] == annotator, "image_id"].unique()
        labels = labels[labels["image_id"].isin(keep)]
    rows = []
    for image_id, group in labels.sort_values("label_id").groupby("image_id", sort=True):
        counts = group["label"].value_counts()
        top = counts[counts == counts.max()].index
        consensus = top[0] if len(top) == 1 else group[group["label"].isin(top)]["label"].iloc[-1]
        distinct = group["label"].nunique()
        status = "single" if len(group) == 1 else ("agree" if distinct == 1 else "disagree")
        who, said = list(group["annotator"]), list(group["label"])
        rows.append({
            "image_id": int(image_id), "label": consensus, "agreement": status, "n_annotators": len(group),
            "annotators": ";".join(who) if packed else who,
            "annotator_labels": ";".join(f"{a}={lab}" for a, lab in zip(who, said, strict=True)) if packed else said,
            "first_labeled_at": group["created_at"].min(), "last_labeled_at": group["created_at"].max(),
            "round": int(group["round_id"].fillna(0).min()),
            "seconds_spent": float(group["seconds_spent"].fillna(0).sum()),
        })
    own = ["path", "sha256", "split", *IMAGE_IDENTIFIER_COLUMNS]
    frame = pd.DataFrame(rows, columns=[c for c in CONSENSUS_COLUMNS if c not in own])
    images = db.images()[["id", *own]].rename(columns={"id": "image_id"})
    frame = frame.merge(images, on="image_id", how="left")[CONSENSUS_COLUMNS]
    if classes:
        frame = frame[frame["label"].isin(classes)]
    if agreement:
        frame = frame[frame["agreement"] == agreement]
    return frame.reset_index(drop=True)


# ----------------------------------------------------------------------------- identifiers
def pseudonymous_uid(secret: bytes, uid: str) -> str:
    """A valid DICOM UID standing for `uid` in this project: '2.25.' and a 128-bit integer from an HMAC of it,
    so images of one study still group, and nobody without the project's secret can link it back."""
    digest = hmac.new(secret, b"dicom-uid:" + uid.encode("utf-8"), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"  # at most 44 characters (DICOM allows 64)


def ingest_roots(db: ProjectDB) -> list[str]:
    """Folders images were ingested from (from the event log), plus the project folder, longest first."""
    roots = {str(db.path.resolve().parent)}
    for payload in db.events("ingest", limit=1_000_000)["payload"]:
        folder = json.loads(payload or "{}").get("folder")
        if folder:
            roots.add(str(folder).rstrip("/") or "/")
    return sorted(roots, key=len, reverse=True)


def relative_source_path(path: str, roots: list[str]) -> str:
    """A recorded path relative to the folder it was ingested from; only its file name when no root holds it.
    Never absolute: the folders above the ingest root (often a patient's or a site's name) stay behind."""
    pure = PurePosixPath(path)
    for root in roots:
        if pure.is_relative_to(root) and pure != PurePosixPath(root):
            return pure.relative_to(root).as_posix()
    return pure.name


def export_table(db: ProjectDB, labeled: pd.DataFrame, *, paths: bool = False, keep_uids: bool = False) -> pd.DataFrame:
    """The export's rows for a labeled set (labeled_set(..., packed=False)), aligned with it row by row:
    source_path relative to the ingest folder (left out when not `paths`), DICOM UIDs and the original files'
    sha256 pseudonymised (keyed with the project secret) unless `keep_uids` (raw UIDs and hashes hold no name but
    lead back to the patient for whoever holds the PACS or the original files)."""
    table = labeled.copy()
    roots = ingest_roots(db) if paths and len(table) else []
    table["source_path"] = [relative_source_path(p, roots) for p in table["path"]] if paths else None
    if not keep_uids and len(table):
        secret = db.secret("pseudonym")
        raw = table[list(UID_COLUMNS)].copy()
        for col in UID_COLUMNS:
            table[col] = [pseudonymous_uid(secret, v) if isinstance(v, str) and v else None for v in raw[col]]
        # the original file's hash finds that file (and its patient) for whoever holds the originals: keyed too,
        # still one value per image content within the project (duplicates stay visible)
        table["sha256"] = [hmac.new(secret, b"sha256:" + v.encode("ascii"), hashlib.sha256).hexdigest()
                           if isinstance(v, str) and v else None for v in table["sha256"]]
        if paths:  # files fetched from a PACS are stored as <study>/<series>/<sop>.dcm: their UIDs go too
            table["source_path"] = [_replace_uids(path, uids, secret)
                                    for path, uids in zip(table["source_path"], raw.itertuples(index=False),
                                                          strict=True)]
    return table[[c for c in EXPORT_COLUMNS if paths or c != "source_path"]]


def _replace_uids(path: str, uids: tuple, secret: bytes) -> str:
    """A path with each of the image's UIDs in it replaced by its pseudonym; a UID counts only as a whole
    (a series UID often extends its study's UID: 1.2.3 is not replaced inside 1.2.3.4)."""
    for uid in sorted({u for u in uids if isinstance(u, str) and u}, key=len, reverse=True):
        path = re.sub(rf"(?<![\d.]){re.escape(uid)}(?!\d|\.\d)", pseudonymous_uid(secret, uid), path)
    return path


# ----------------------------------------------------------------------------- image files without metadata
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks a decoder needs or that change how pixels look; text (tEXt, iTXt, zTXt), EXIF (eXIf), ICC profiles
# (iCCP, whose name is free text), times and private chunks are dropped.
_PNG_KEEP = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"pHYs", b"bKGD"}
# JPEG markers a decoder needs: frames (SOF0-15, with DHT C4 and DAC CC), tables, restart interval, scans.
_JPEG_KEEP = {*range(0xC0, 0xD0), 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xDA}
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}  # modes Pillow writes to PNG without losing values


def strip_png_metadata(data: bytes) -> bytes:
    """The same PNG with only the chunks in _PNG_KEEP: pixels untouched (no re-encoding), metadata gone.
    Pillow re-saving would decode and re-compress everything and still carry an ICC profile along."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG")
    out, i = [_PNG_SIGNATURE], len(_PNG_SIGNATURE)
    while i + 12 <= len(data):
        length, kind = int.from_bytes(data[i:i + 4], "big"), data[i + 4:i + 8]
        end = i + 12 + length
        if end > len(data):
            raise ValueError("truncated PNG chunk")
        if kind in _PNG_KEEP:
            out.append(data[i:end])
        i = end
        if kind == b"IEND":
            return b"".join(out)
    raise ValueError("PNG without IEND")


def strip_jpeg_metadata(data: bytes) -> bytes:
    """The same JPEG with only the segments a decoder needs (and Adobe's colour transform flag): EXIF, XMP,
    ICC, IPTC, comments and whatever follows the end of the image are dropped, the compressed data copied
    bit for bit (Pillow can only re-encode, which loses quality). Raises ValueError on anything unexpected."""
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG")
    out, i, n = [b"\xff\xd8"], 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise ValueError("JPEG marker expected")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker == 0xD9:
            out.append(b"\xff\xd9")
            return b"".join(out)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length: restart markers, TEM
            out.append(bytes((0xFF, marker)))
            continue
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2 or i + length > n:
            raise ValueError("truncated JPEG segment")
        segment = data[i:i + length]
        i += length
        if marker in _JPEG_KEEP or (marker == 0xEE and segment[2:7] == b"Adobe"):
            out.append(bytes((0xFF, marker)) + segment)
        if marker == 0xDA:  # entropy-coded data runs to the next marker that is not stuffing or a restart
            j = i
            while True:
                k = data.find(b"\xff", j)
                if k < 0 or k + 1 >= n:
                    raise ValueError("JPEG scan without an end")
                if data[k + 1] == 0x00 or 0xD0 <= data[k + 1] <= 0xD7:
                    j = k + 2
                elif data[k + 1] == 0xFF:
                    j = k + 1
                else:
                    break
            out.append(data[i:k])
            i = k
    raise ValueError("JPEG without an end-of-image marker")


def metadata_free_image(src: Path) -> tuple[bytes, str]:
    """(bytes, extension) of an image file as exported: PNG and JPEG with their metadata stripped losslessly;
    DICOM as PNG of its windowed pixels (no header); other formats, and images an EXIF orientation turns
    (which stripping would lose), as PNG of the decoded pixels as annotators saw them."""
    if is_dicom(src):
        return png_bytes(read_grey(src)), "png"
    data = src.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # ingest checked the size already
        with Image.open(io.BytesIO(data)) as im:
            orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation
            if orientation in (1, None) and im.format in ("PNG", "JPEG"):
                try:
                    if im.format == "PNG":
                        return strip_png_metadata(data), "png"
                    return strip_jpeg_metadata(data), "jpg"
                except ValueError:
                    pass  # a file Pillow reads but our parser does not: re-encode its pixels below
            im.seek(0)
            im.load()
            upright = ImageOps.exif_transpose(im)
    if upright.mode not in _PNG_MODES:
        return png_bytes(read_grey(src)), "png"
    buf = io.BytesIO()
    upright.save(buf, format="PNG")
    return strip_png_metadata(buf.getvalue()), "png"


# ----------------------------------------------------------------------------- writing
def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """Prefix text cells a spreadsheet would run as a formula with a quote (CSV injection)."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v)
    return out


def packed_for_csv(table: pd.DataFrame) -> pd.DataFrame:
    """List columns joined with ';' (annotators 'alice;bob', annotator_labels 'Normal;GroundGlass', aligned),
    text cells a spreadsheet would run as formulas neutralised: the CSV form of an export table."""
    out = table.copy()
    for col in LIST_COLUMNS:
        if col in out.columns:
            out[col] = out[col].map(lambda v: ";".join(map(str, v)) if isinstance(v, list | tuple) else v)
    return neutralise_formulas(out)


def safe_component(name: str) -> str:
    """A string usable as one file or folder name: no separators, no '..', no control characters."""
    cleaned = re.sub(r"[^A-Za-z0-9 _.()+-]", "_", name).strip(" .")
    return cleaned[:80] or "_"


def _inside(base: Path, target: Path) -> Path:
    resolved = target.resolve()
    if not resolved.is_relative_to(base.resolve()):
        raise CxrAlError(f"refusing to write {target}: outside the export folder {base}")
    return resolved


def write_export(table: pd.DataFrame, out: Path | str, fmt: str, *, sources: list[str] | None = None,
                 classes: list[str] | None = None, link: bool = False, overwrite: bool = False) -> Path:
    """Write an export table (export_table) to OUT in the given format; returns what was written.

    imagefolder needs `sources`, the source file of each row; `classes` (project order) go to classes.txt.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise CxrAlError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "imagefolder":
        if sources is None or len(sources) != len(table):
            raise CxrAlError("an imagefolder export needs the source file of every row")
        return _write_imagefolder(table, [Path(s) for s in sources], out, classes or [], link=link,
                                  overwrite=overwrite)
    if out.exists() and (out.is_dir() or not overwrite):
        raise CxrAlError(f"{out} already exists; choose another name (or --overwrite for a file)")
    if not out.parent.exists():
        raise CxrAlError(f"folder {out.parent} does not exist")
    tmp = out.with_name(out.name + ".partial")
    if fmt == "csv":
        packed_for_csv(table).to_csv(tmp, index=False)
    elif fmt == "parquet":
        table.to_parquet(tmp, index=False)
    else:
        table.to_json(tmp, orient="records", lines=True, date_format="iso")
    os.replace(tmp, out)
    return out


def _replaceable(out: Path) -> None:
    """Refuse to replace a folder unless an earlier export wrote it and it holds nothing else."""
    marker = out / MARKER
    try:
        ours = set(json.loads(marker.read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CxrAlError(f"{out} is not empty and was not written by `cxr-al export`; refusing to replace it: "
                         "choose an empty or new folder") from exc
    foreign = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if not p.is_dir() and p != marker and p.relative_to(out).as_posix() not in ours)
    if foreign:
        raise CxrAlError(f"{out} holds files an export did not write (e.g. {foreign[0]}); refusing to replace "
                         "it: move them away or choose another folder")


def _write_imagefolder(table: pd.DataFrame, sources: list[Path], out: Path, classes: list[str], *,
                       link: bool, overwrite: bool) -> Path:
    """OUT/train/<class>/<id>.<ext> (pool) and OUT/test/<class>/<id>.<ext>, a metadata.csv per split for
    Hugging Face `imagefolder`, OUT/manifest.csv (every export column), OUT/classes.txt in project order.
    Built beside OUT and moved into place, so OUT is always exactly one export, never a mix of two."""
    if out.is_symlink():
        raise CxrAlError(f"{out} is a symbolic link; choose a real folder")
    if out.exists() and not out.is_dir():
        raise CxrAlError(f"{out} is a file; choose a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CxrAlError(f"{out} is not empty; choose an empty or new folder (or --overwrite to replace "
                             "an earlier export)")
        _replaceable(out)
    if not out.parent.is_dir():
        raise CxrAlError(f"folder {out.parent} does not exist")
    build = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    try:
        file_names = [_write_image(row, src, build, link=link)
                      for row, src in zip(table.itertuples(index=False), sources, strict=True)]
        _write_tables(table, file_names, build, classes)
        written = sorted(p.relative_to(build).as_posix() for p in build.rglob("*") if p.is_file())
        (build / MARKER).write_text(json.dumps({"written_by": "cxr-al export", "linked_originals": link,
                                                "files": written}, indent=1))
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            os.rename(out, old)
        try:
            os.rename(build, out)
        except OSError:
            if old.exists():
                os.rename(old, out)  # the earlier export stays as it was
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return out


def _write_image(row, src: Path, build: Path, *, link: bool) -> str:
    """Write one image as <split folder>/<class>/<image id>.<ext>; returns that path, relative to the export."""
    if not src.is_file():
        raise CxrAlError(f"image {row.image_id} is missing on disk: {src}")
    class_dir = _inside(build, build / SPLIT_FOLDERS.get(row.split, "train") / safe_component(str(row.label)))
    class_dir.mkdir(parents=True, exist_ok=True)
    if link and not is_dicom(src):
        ext = safe_component(src.suffix.lstrip(".").lower()) or "img"
        dest = class_dir / f"{int(row.image_id)}.{ext}"
        try:
            os.link(src, dest)  # the original bytes, metadata included: the caller was warned
            return dest.relative_to(build.resolve()).as_posix()
        except OSError:
            pass  # another file system: a metadata-free copy instead
    data, ext = metadata_free_image(src)
    dest = class_dir / f"{int(row.image_id)}.{ext}"
    dest.write_bytes(data)
    return dest.relative_to(build.resolve()).as_posix()


def _write_tables(table: pd.DataFrame, file_names: list[str], build: Path, classes: list[str]) -> None:
    """manifest.csv (file_name relative to the export), metadata.csv per split (file_name relative to the
    split folder, as Hugging Face imagefolder reads it next to the images) and classes.txt."""
    manifest = table.assign(file_name=file_names)
    manifest = manifest[["file_name", *table.columns]]
    packed_for_csv(manifest).to_csv(build / "manifest.csv", index=False)
    for split, folder in SPLIT_FOLDERS.items():
        rows = manifest[manifest["split"] == split]
        if len(rows):
            rows = rows.assign(file_name=[f.split("/", 1)[1] for f in rows["file_name"]])
            packed_for_csv(rows[SPLIT_METADATA_COLUMNS]).to_csv(build / folder / "metadata.csv", index=False)
    extra = sorted(set(map(str, table["label"])) - set(classes))
    (build / "classes.txt").write_text("".join(f"{c}\n" for c in [*classes, *extra]))
