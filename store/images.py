"""Read any ingestable image (PNG, JPEG, BMP, TIFF, DICOM) as 8-bit greyscale pixels."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from store.errors import CxrAlError

# Formats we accept, as PIL names them; DICOM is recognised separately by content.
PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "BMP": "bmp", "TIFF": "tiff"}

# Largest image ingest decodes, in pixels (width x height), checked from the header before any pixel is
# decoded; CXR_AL_MAX_PIXELS overrides it. A 3000 x 3000 radiograph is 9 megapixels. Pillow refuses PNG, JPEG,
# BMP and TIFF over 2 x PIL.Image.MAX_IMAGE_PIXELS (179 megapixels) whatever this cap says.
DEFAULT_MAX_PIXELS = 100_000_000
_SCALE_BLOCK = 1 << 20  # pixels scaled to 8 bits per step, so the float copy stays small


@dataclass(frozen=True)
class ImageInfo:
    """What ingest records about a decoded image."""

    format: str  # png | jpeg | bmp | tiff | dicom
    modality: str  # DICOM Modality (CR, DX, ...) or "" for plain images
    width: int
    height: int
    notes: tuple[str, ...] = ()  # what decoding had to repair, worth telling the user (e.g. non-finite pixels)


def max_pixels_limit() -> int:
    """The pixel cap ingest applies: CXR_AL_MAX_PIXELS when set, else DEFAULT_MAX_PIXELS."""
    raw = os.environ.get("CXR_AL_MAX_PIXELS", "").strip().replace("_", "")
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise CxrAlError(f"CXR_AL_MAX_PIXELS={raw!r} is not a number of pixels (e.g. 100000000)") from None
    if value <= 0:
        raise CxrAlError(f"CXR_AL_MAX_PIXELS must be positive, got {value}")
    return value


def is_dicom(path: Path | str) -> bool:
    """True when the file carries the DICOM Part 10 preamble ('DICM' at byte 128), whatever its name."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _check_size(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise CxrAlError(f"{path}: too large: {width} x {height} = {width * height:,} pixels, over the limit of "
                         f"{max_pixels:,} (raise CXR_AL_MAX_PIXELS to ingest it)")


def _scale_to_uint8(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """(8-bit pixels scaled min-max over the finite values, number of non-finite pixels)."""
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise CxrAlError(f"expected a 2-D greyscale image, got shape {arr.shape}")
    out = np.zeros(arr.shape, dtype=np.uint8)
    if arr.size == 0:
        return out, 0
    n_bad = 0
    if arr.dtype.kind in "fc":
        arr = arr.real if arr.dtype.kind == "c" else arr
        finite = np.isfinite(arr)
        n_bad = int(arr.size - np.count_nonzero(finite))
        if n_bad == arr.size:
            return out, n_bad
        lo = float(np.min(arr, where=finite, initial=np.inf))
        hi = float(np.max(arr, where=finite, initial=-np.inf))
    else:
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return out, n_bad
    scale = 255.0 / (hi - lo)
    rows = max(1, _SCALE_BLOCK // max(arr.shape[1], 1))
    for start in range(0, arr.shape[0], rows):
        block = arr[start:start + rows].astype(np.float64)
        block -= lo
        block *= scale
        if n_bad:  # +inf shows as the brightest value, -inf and NaN as the darkest
            np.nan_to_num(block, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.rint(block, out=block)
        np.clip(block, 0, 255, out=block)
        out[start:start + rows] = block
    return out, n_bad


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric 2-D array linearly onto 0..255 (min-max over its finite values); constant images become 0."""
    return _scale_to_uint8(arr)[0]


def _nonfinite_note(n_bad: int, total: int) -> tuple[str, ...]:
    if not n_bad:
        return ()
    return (f"{n_bad} of {total} pixels are not finite (inf/NaN): scaled over the finite ones, "
            "+inf shown white, -inf and NaN black",)


def _read_dicom(path: Path, max_pixels: int | None) -> tuple[np.ndarray, ImageInfo]:
    with warnings.catch_warnings():  # pydicom warns about every odd header value; failures say what matters
        warnings.simplefilter("ignore")
        return _read_dicom_quietly(path, max_pixels)


def _read_dicom_quietly(path: Path, max_pixels: int | None) -> tuple[np.ndarray, ImageInfo]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), defer_size="1 MB")  # pixel data is read only once it passes the checks
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise CxrAlError(f"{path}: unreadable DICOM: {_one_line(exc, path)}") from exc
    if "PixelData" not in ds:
        raise CxrAlError(f"{path}: DICOM holds no image: no PixelData (SOP class {ds.get('SOPClassUID', '?')})")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    except Exception as exc:  # missing or malformed Rows/Columns/NumberOfFrames
        raise CxrAlError(f"{path}: invalid DICOM header: image size unreadable ({_one_line(exc, path)})") from exc
    _check_size(path, cols, rows, max_pixels)
    if frames > 1:
        raise CxrAlError(f"{path}: multi-frame DICOM: {frames} frames (a cine loop, tomosynthesis or a stack, "
                         "not one radiograph); export the frame you want as its own file")
    try:
        pixels, decoded = _decode_dicom_pixels(ds)
    except Exception as exc:  # pydicom raises many types for bad or unsupported pixel data
        raise CxrAlError(f"{path}: undecodable DICOM pixel data: {_one_line(exc, path)}") from exc
    photometric = str(decoded.get("photometric_interpretation", photometric)).strip().upper()
    try:
        grey, notes = _dicom_to_grey(ds, pixels, photometric)
    except CxrAlError as exc:
        raise CxrAlError(f"{path}: {exc}") from exc.__cause__
    except Exception as exc:  # rescale / window / LUT values that pydicom cannot apply
        raise CxrAlError(f"{path}: invalid DICOM header: cannot apply its rescale, window or LUT "
                         f"({_one_line(exc, path)})") from exc
    info = ImageInfo("dicom", str(ds.get("Modality", "")), int(grey.shape[1]), int(grey.shape[0]), notes)
    return grey, info


def _decode_dicom_pixels(ds) -> tuple[np.ndarray, dict]:
    """Decoded pixels and what the decoder says they are now (JPEG 2000 YBR_RCT/ICT and YBR_FULL come out RGB)."""
    from pydicom.pixels import as_pixel_options, get_decoder

    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not tsyntax:
        raise ValueError("the file meta has no Transfer Syntax UID")
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise NotImplementedError(f"transfer syntax {tsyntax.name} is not supported") from exc
    if not decoder.is_available:
        raise RuntimeError(f"no decoder installed for {tsyntax.name} (pylibjpeg / python-gdcm; see pyproject.toml)")
    return decoder.as_array(ds, **as_pixel_options(ds))


def _dicom_to_grey(ds, pixels: np.ndarray, photometric: str) -> tuple[np.ndarray, tuple[str, ...]]:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    if photometric.startswith("MONOCHROME") and pixels.ndim == 2:
        values = apply_modality_lut(pixels, ds)
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
        grey, n_bad = _scale_to_uint8(values)
        if photometric == "MONOCHROME1":  # high values are dark: invert to the usual look
            grey = 255 - grey
        return grey, _nonfinite_note(n_bad, values.size)
    if photometric == "PALETTE COLOR" and pixels.ndim == 2:
        pixels = apply_color_lut(pixels, ds)
        photometric = "RGB"
    if pixels.ndim == 3 and pixels.shape[-1] == 3 and photometric == "RGB":
        if pixels.dtype == np.uint8:
            return np.asarray(Image.fromarray(pixels, "RGB").convert("L")), ()
        luminance = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return to_uint8(luminance), ()
    raise CxrAlError(f"unsupported DICOM photometric interpretation: {photometric} with pixel shape {pixels.shape}")


def _one_line(exc: BaseException, path: Path) -> str:
    """The exception's message on one line, at most 300 characters, the file's folder left out (the skip names it)."""
    text = " ".join(str(exc).replace(str(path), path.name).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _read_pil(path: Path, max_pixels: int | None) -> tuple[np.ndarray, ImageInfo]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap is checked below
            with Image.open(path) as im:
                fmt = PIL_FORMATS.get(im.format or "")
                if fmt is None:
                    raise CxrAlError(f"{path}: unsupported image format: {im.format}")
                _check_size(path, im.size[0], im.size[1], max_pixels)
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)
                im.load()  # decodes fully: truncated files fail here, not later
                ImageOps.exif_transpose(im, in_place=True)  # pixels as the camera or scanner meant them seen
                grey, notes = _pil_to_grey(path, im)
    except CxrAlError:
        raise
    except Image.DecompressionBombError as exc:
        raise CxrAlError(f"{path}: too large: {_one_line(exc, path)}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CxrAlError(f"{path}: not a readable image: {_one_line(exc, path)}") from exc
    return grey, ImageInfo(fmt, "", int(grey.shape[1]), int(grey.shape[0]), notes)


def _pil_to_grey(path: Path, im: Image.Image) -> tuple[np.ndarray, tuple[str, ...]]:
    """8-bit greyscale from any PIL mode; 16-bit and float images are scaled by their range."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(im)
        grey, n_bad = _scale_to_uint8(values)
        return grey, _nonfinite_note(n_bad, values.size)
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        if im.getchannel("A").getextrema()[1] == 0:
            raise CxrAlError(f"{path}: fully transparent: every pixel has alpha 0, there is nothing to see")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im)
    return np.asarray(im.convert("L"), dtype=np.uint8), ()


def read_image(path: Path | str, *, max_pixels: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Decode a file into (uint8 HxW pixels, info); raises CxrAlError for anything not a readable image.

    max_pixels: refuse, from the header and before decoding, an image with more pixels (None: no cap).
    """
    path = Path(path)
    if not path.is_file():
        raise CxrAlError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CxrAlError(f"{path}: empty file: 0 bytes")
    if is_dicom(path):
        return _read_dicom(path, max_pixels)
    return _read_pil(path, max_pixels)


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
