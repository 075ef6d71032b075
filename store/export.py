"""Export the labeled set with provenance: CSV, Parquet, JSON Lines or an ImageFolder tree."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd

from store.db import ProjectDB
from store.errors import CxrAlError
from store.images import is_dicom, png_bytes, read_grey

FORMATS = ("csv", "parquet", "jsonl", "imagefolder")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
EXPORT_COLUMNS = ["image_id", "path", "sha256", "split", "label", "agreement", "n_annotators", "annotators",
                  "annotator_labels", "first_labeled_at", "last_labeled_at", "round", "seconds_spent"]


def labeled_set(db: ProjectDB, *, split: str = "all", classes: list[str] | None = None,
                annotator: str | None = None, agreement: str | None = None) -> pd.DataFrame:
    """One row per labeled image: consensus label, who labeled it, when, in which round, agreement status.

    The consensus is the label most current annotators gave; a tie goes to the most recent label
    and the image is marked 'disagree'. Agreement: single | agree | disagree.
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
        rows.append({
            "image_id": int(image_id), "label": consensus, "agreement": status, "n_annotators": len(group),
            "annotators": ";".join(group["annotator"]),
            "annotator_labels": ";".join(f"{a}={lab}" for a, lab in zip(group["annotator"], group["label"], strict=True)),
            "first_labeled_at": group["created_at"].min(), "last_labeled_at": group["created_at"].max(),
            "round": int(group["round_id"].fillna(0).min()),
            "seconds_spent": float(group["seconds_spent"].fillna(0).sum()),
        })
    frame = pd.DataFrame(rows, columns=[c for c in EXPORT_COLUMNS if c not in ("path", "sha256", "split")])
    images = db.images()[["id", "path", "sha256", "split"]].rename(columns={"id": "image_id"})
    frame = frame.merge(images, on="image_id", how="left")[EXPORT_COLUMNS]
    if classes:
        frame = frame[frame["label"].isin(classes)]
    if agreement:
        frame = frame[frame["agreement"] == agreement]
    return frame.reset_index(drop=True)


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """Prefix text cells a spreadsheet would run as a formula with a quote (CSV injection)."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v)
    return out


def safe_component(name: str) -> str:
    """A string usable as one file or folder name: no separators, no '..', no control characters."""
    cleaned = re.sub(r"[^A-Za-z0-9 _.()+-]", "_", name).strip(" .")
    return cleaned[:80] or "_"


def _inside(base: Path, target: Path) -> Path:
    resolved = target.resolve()
    if not resolved.is_relative_to(base.resolve()):
        raise CxrAlError(f"refusing to write {target}: outside the export folder {base}")
    return resolved


def write_export(frame: pd.DataFrame, out: Path | str, fmt: str, *, link: bool = False,
                 overwrite: bool = False) -> Path:
    """Write an export frame to OUT in the given format; returns what was written."""
    out = Path(out)
    if fmt not in FORMATS:
        raise CxrAlError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "imagefolder":
        return _write_imagefolder(frame, out, link=link, overwrite=overwrite)
    if out.exists() and (out.is_dir() or not overwrite):
        raise CxrAlError(f"{out} already exists; choose another name (or --overwrite for a file)")
    if not out.parent.exists():
        raise CxrAlError(f"folder {out.parent} does not exist")
    tmp = out.with_name(out.name + ".partial")
    if fmt == "csv":
        neutralise_formulas(frame).to_csv(tmp, index=False)
    elif fmt == "parquet":
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_json(tmp, orient="records", lines=True, date_format="iso")
    os.replace(tmp, out)
    return out


def _write_imagefolder(frame: pd.DataFrame, out: Path, *, link: bool, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CxrAlError(f"{out} is not empty; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for row in frame.itertuples(index=False):
        src = Path(row.path)
        class_dir = _inside(out, out / safe_component(row.label))
        class_dir.mkdir(exist_ok=True)
        stem = safe_component(src.stem)
        if not src.is_file():
            raise CxrAlError(f"image {row.image_id} is missing on disk: {src}")
        if is_dicom(src):
            # decoded pixels only: no DICOM header, so no patient identifiers leave the project
            dest = _inside(out, class_dir / f"{row.image_id}_{stem}.png")
            dest.write_bytes(png_bytes(read_grey(src)))
        else:
            ext = "." + safe_component(src.suffix.lstrip(".").lower()) if src.suffix else ""
            dest = _inside(out, class_dir / f"{row.image_id}_{stem}{ext}")
            if dest.exists():
                dest.unlink()
            if link:
                try:
                    os.link(src, dest)
                except OSError:
                    shutil.copy2(src, dest)
            else:
                shutil.copyfile(src, dest)
        written.append(str(dest.relative_to(out.resolve())))
    manifest = frame.assign(exported_file=written)
    neutralise_formulas(manifest).to_csv(out / "manifest.csv", index=False)
    return out
