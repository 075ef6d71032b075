"""Read any ingestable image (PNG, JPEG, BMP, TIFF, DICOM) as 8-bit greyscale pixels."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from store.errors import CxrAlError

# Formats we accept, as PIL names them; DICOM is recognised separately by content.
PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "BMP": "bmp", "TIFF": "tiff"}


@dataclass(frozen=True)
class ImageInfo:
    """What ingest records about a decoded image."""

    format: str  # png | jpeg | bmp | tiff | dicom
    modality: str  # DICOM Modality (CR, DX, ...) or "" for plain images
    width: int
    height: int


def is_dicom(path: Path | str) -> bool:
    """True when the file carries the DICOM Part 10 preamble ('DICM' at byte 128), whatever its name."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric 2-D array linearly onto 0..255 (min-max); constant images become 0."""
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2:
        raise CxrAlError(f"expected a 2-D greyscale image, got shape {arr.shape}")
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (arr - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _read_dicom(path: Path) -> tuple[np.ndarray, ImageInfo]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise CxrAlError(f"{path}: unreadable DICOM ({exc})") from exc
    if "PixelData" not in ds:
        raise CxrAlError(f"{path}: DICOM file holds no image (no PixelData; SOP class {ds.get('SOPClassUID', '?')})")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad/unsupported pixel data
        raise CxrAlError(f"{path}: cannot decode DICOM pixel data ({exc})") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise CxrAlError(f"{path}: multi-frame DICOM ({ds.NumberOfFrames} frames) is not a radiograph")
    if photometric.startswith("MONOCHROME"):
        values = apply_modality_lut(pixels, ds)
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
        grey = to_uint8(values)
        if photometric == "MONOCHROME1":  # high values are dark: invert to the usual look
            grey = 255 - grey
    elif pixels.ndim == 3 and pixels.shape[-1] == 3:
        from pydicom.pixels import convert_color_space

        if photometric != "RGB":
            pixels = convert_color_space(pixels, photometric, "RGB")
        grey = np.asarray(Image.fromarray(pixels.astype(np.uint8), "RGB").convert("L"))
    else:
        raise CxrAlError(f"{path}: unsupported DICOM photometric interpretation {photometric}")
    info = ImageInfo("dicom", str(ds.get("Modality", "")), int(grey.shape[1]), int(grey.shape[0]))
    return grey, info


def _read_pil(path: Path) -> tuple[np.ndarray, ImageInfo]:
    try:
        with Image.open(path) as im:
            fmt = PIL_FORMATS.get(im.format or "")
            if fmt is None:
                raise CxrAlError(f"{path}: unsupported image format {im.format}")
            im.load()  # decodes fully: truncated files fail here, not later
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            grey = _pil_to_grey(im)
    except CxrAlError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CxrAlError(f"{path}: not a readable image ({exc})") from exc
    return grey, ImageInfo(fmt, "", int(grey.shape[1]), int(grey.shape[0]))


def _pil_to_grey(im: Image.Image) -> np.ndarray:
    """8-bit greyscale from any PIL mode; 16-bit and float images are scaled by their range."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_uint8(np.asarray(im))
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im)
    return np.asarray(im.convert("L"), dtype=np.uint8)


def read_image(path: Path | str) -> tuple[np.ndarray, ImageInfo]:
    """Decode a file into (uint8 HxW pixels, info); raises CxrAlError for anything not a readable image."""
    path = Path(path)
    if not path.is_file():
        raise CxrAlError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CxrAlError(f"{path}: empty file (0 bytes)")
    if is_dicom(path):
        return _read_dicom(path)
    return _read_pil(path)


def read_grey(path: Path | str) -> np.ndarray:
    """8-bit greyscale pixels (HxW uint8) of an ingestable image, DICOM windowing applied."""
    return read_image(path)[0]


def load_resized(path: Path | str, size: int) -> np.ndarray:
    """Greyscale pixels resized to size x size (bilinear), as uint8; what the models consume."""
    grey = read_grey(path)
    if grey.shape != (size, size):
        grey = np.asarray(Image.fromarray(grey).resize((size, size), Image.BILINEAR))
    return grey


def png_bytes(grey: np.ndarray) -> bytes:
    """Encode 8-bit greyscale pixels as PNG (no metadata: nothing identifying travels with it)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(grey, dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()
