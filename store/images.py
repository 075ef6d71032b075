"""Read any ingestable image (PNG, JPEG, BMP, TIFF, DICOM): as 8-bit greyscale for the models (read_image), or
as its native values at full bit depth for the viewer (read_native)."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from store.errors import CxrAlError

# Formats we accept, as PIL names them; DICOM is recognised separately by content.
PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "BMP": "bmp", "TIFF": "tiff"}

# Largest image ingest decodes, in pixels (width x height), checked from the header before any pixel is
# decoded; CXR_AL_MAX_PIXELS overrides it. A 3000 x 3000 radiograph is 9 megapixels. Pillow refuses PNG, JPEG,
# BMP and TIFF over 2 x PIL.Image.MAX_IMAGE_PIXELS (179 megapixels) whatever this cap says.
DEFAULT_MAX_PIXELS = 100_000_000
_T = TypeVar("_T")
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
    ds, pixels, photometric = _open_dicom(path, max_pixels)
    try:
        grey, notes = _dicom_to_grey(ds, pixels, photometric)
    except CxrAlError as exc:
        raise CxrAlError(f"{path}: {exc}") from exc.__cause__
    except Exception as exc:  # rescale / window / LUT values that pydicom cannot apply
        raise CxrAlError(f"{path}: invalid DICOM header: cannot apply its rescale, window or LUT "
                         f"({_one_line(exc, path)})") from exc
    info = ImageInfo("dicom", str(ds.get("Modality", "")), int(grey.shape[1]), int(grey.shape[0]), notes)
    return grey, info


def _open_dicom(path: Path, max_pixels: int | None) -> tuple[Any, np.ndarray, str]:
    """(dataset, decoded pixels, photometric interpretation after decoding) of a single-frame DICOM image."""
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
    return ds, pixels, photometric


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
    fmt, (grey, notes) = _decode_pil(path, max_pixels, _pil_to_grey)
    return grey, ImageInfo(fmt, "", int(grey.shape[1]), int(grey.shape[0]), notes)


def _decode_pil(path: Path, max_pixels: int | None, convert: Callable[[Path, Image.Image], _T]) -> tuple[str, _T]:
    """(format, convert(path, decoded image)) of a PNG, JPEG, BMP or TIFF file, its first frame, EXIF-oriented."""
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
                converted = convert(path, im)
    except CxrAlError:
        raise
    except Image.DecompressionBombError as exc:
        raise CxrAlError(f"{path}: too large: {_one_line(exc, path)}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CxrAlError(f"{path}: not a readable image: {_one_line(exc, path)}") from exc
    return fmt, converted


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


def _nonempty_file(path: Path | str) -> Path:
    """The path, when it names a file that is not empty; else CxrAlError."""
    path = Path(path)
    if not path.is_file():
        raise CxrAlError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CxrAlError(f"{path}: empty file: 0 bytes")
    return path


def read_image(path: Path | str, *, max_pixels: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Decode a file into (uint8 HxW pixels, info); raises CxrAlError for anything not a readable image.

    max_pixels: refuse, from the header and before decoding, an image with more pixels (None: no cap).
    """
    path = _nonempty_file(path)
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


# ----------------------------------------------------------------------------- native values, for the viewer
# The models see 8-bit pixels (read_image). A reader needs the file's own values: 12- or 16-bit DICOM after its
# rescale (modality LUT), 16-bit PNG/TIFF as stored, so window and level work on the full bit depth.
IDENTITY_WINDOW_8BIT = (128.0, 256.0)  # DICOM LINEAR (center, width) that maps 0..255 onto itself
_PERCENTILE_SAMPLES = 1 << 18  # pixels the robust range is estimated from


@dataclass(frozen=True)
class NativeInfo:
    """What a viewer needs to window an image on its own values (see read_native)."""

    format: str  # png | jpeg | bmp | tiff | dicom
    modality: str  # DICOM Modality or "" for plain images
    width: int
    height: int
    bits_stored: int  # per sample: DICOM BitsStored, 16 for 16-bit PNG/TIFF, 32 for integer/float TIFF, else 8
    photometric: str  # MONOCHROME1 (high values dark: shown inverted) or MONOCHROME2
    window: tuple[float, float]  # the file's default (center, width), in the values' units
    window_source: str  # dicom-window | dicom-voi-lut | full-range | 8-bit
    voi_function: str  # LINEAR (DICOM's, for stored integers) or LINEAR_EXACT (float images, or the DICOM tag)
    value_range: tuple[float, float]  # min and max of the values
    robust_range: tuple[float, float]  # 1st and 99th percentile of the values
    units: str  # "HU" for CT-like rescaled DICOM (Modality CT or RescaleType HU), else "" (no physical unit)
    notes: tuple[str, ...] = ()

    @property
    def inverted(self) -> bool:
        """True when high values are shown dark (DICOM MONOCHROME1)."""
        return self.photometric == "MONOCHROME1"


def full_range_window(lo: float, hi: float, voi_function: str = "LINEAR") -> tuple[float, float]:
    """The (center, width) that maps lo to black and hi to white under the given VOI function."""
    if voi_function == "LINEAR_EXACT":
        return (lo + hi) / 2, max(hi - lo, 1e-6)
    width = max(hi - lo, 0.0) + 1.0
    return lo + width / 2, width


def apply_window(values: np.ndarray, center: float, width: float, *, voi_function: str = "LINEAR",
                 invert: bool = False) -> np.ndarray:
    """8-bit display pixels of native values through a window (DICOM PS3.3 C.11.2.1.2: LINEAR or LINEAR_EXACT).

    LINEAR: below center - 0.5 - (width - 1) / 2 black, above center - 0.5 + (width - 1) / 2 white (width >= 1);
    LINEAR_EXACT: black below center - width / 2, white above center + width / 2. invert: MONOCHROME1."""
    out = np.array(values, dtype=np.float32, copy=True)
    if voi_function == "LINEAR_EXACT":
        low, span = float(center) - float(width) / 2, max(float(width), 1e-12)
    else:
        width = max(float(width), 1.0)
        if width == 1.0:  # DICOM: a width of 1 is a threshold at the center
            low, span = float(center) - 0.5, 1e-12
        else:
            low, span = float(center) - 0.5 - (width - 1) / 2, width - 1
    out -= low
    out *= 255.0 / span
    np.clip(out, 0, 255, out=out)
    np.rint(out, out=out)
    grey = out.astype(np.uint8)
    return np.subtract(255, grey, out=grey) if invert else grey


def _finite_values(values: np.ndarray) -> tuple[np.ndarray, tuple[float, float], tuple[str, ...]]:
    """(values as float32 with inf/NaN replaced, (min, max) of the finite ones, a note when any were not)."""
    values = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(values)
    n_bad = int(values.size - np.count_nonzero(finite))
    if n_bad == values.size:
        return np.zeros_like(values), (0.0, 0.0), _nonfinite_note(n_bad, values.size)
    lo = float(np.min(values, where=finite, initial=np.inf))
    hi = float(np.max(values, where=finite, initial=-np.inf))
    if n_bad:  # as read_image shows them: +inf the top of the range, -inf and NaN the bottom
        values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
    return values, (lo, hi), _nonfinite_note(n_bad, values.size)


def _robust_range(values: np.ndarray) -> tuple[float, float]:
    """1st and 99th percentile, from an even sample of at most _PERCENTILE_SAMPLES pixels."""
    step = max(1, int(np.sqrt(values.size / _PERCENTILE_SAMPLES)))
    lo, hi = np.percentile(values[::step, ::step], [1, 99])
    return float(lo), float(hi)


def _first(value: Any) -> float:
    """The first of a DICOM multi-valued element (e.g. WindowCenter '40\\400'), as a float."""
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)


def _dicom_window(ds) -> tuple[tuple[float, float], str] | None:
    """The file's default window: its first WindowCenter/WindowWidth, else its first VOI LUT's input range."""
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        except (TypeError, ValueError, IndexError):
            center = width = float("nan")
        if np.isfinite(center) and np.isfinite(width) and width > 0:
            return (center, width), "dicom-window"
    voi = ds.get("VOILUTSequence")
    if voi:
        try:
            entries, first = int(voi[0].LUTDescriptor[0]) or 65536, int(voi[0].LUTDescriptor[1])
        except (AttributeError, TypeError, ValueError, IndexError):
            return None
        if ds.get("PixelRepresentation", 0) == 1 and first >= 32768:  # a signed first value stored unsigned
            first -= 65536
        return (first + entries / 2, float(entries)), "dicom-voi-lut"
    return None


def _dicom_native(ds, pixels: np.ndarray, photometric: str) -> dict[str, Any]:
    """Native values of a decoded DICOM image: monochrome after its modality LUT, colour as 8-bit luminance."""
    from pydicom.pixels import apply_modality_lut

    modality = str(ds.get("Modality", ""))
    if not (photometric.startswith("MONOCHROME") and pixels.ndim == 2):
        grey, notes = _dicom_to_grey(ds, pixels, photometric)  # colour: what read_image shows, 8 bits
        return {"values": grey, "bits": 8, "photometric": "MONOCHROME2", "window": None, "source": "8-bit",
                "function": "LINEAR", "units": "", "notes": notes, "modality": modality}
    values = apply_modality_lut(pixels, ds)
    function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper()
    notes: tuple[str, ...] = ()
    if function not in ("LINEAR", "LINEAR_EXACT"):
        notes = (f"VOI LUT function {function} shown as LINEAR",)
        function = "LINEAR"
    found = _dicom_window(ds)
    rescale_type = str(ds.get("RescaleType", "")).strip().upper()
    return {"values": values, "bits": int(ds.get("BitsStored") or pixels.dtype.itemsize * 8),
            "photometric": photometric, "window": None if found is None else found[0],
            "source": "full-range" if found is None else found[1], "function": function,
            "units": "HU" if modality.upper() == "CT" or rescale_type == "HU" else "", "notes": notes,
            "modality": modality}


def _pil_to_native(path: Path, im: Image.Image) -> dict[str, Any]:
    """Native values of a decoded PIL image: 16/32-bit and float samples as stored, the rest as 8-bit grey."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return {"values": np.asarray(im), "bits": 16 if im.mode.startswith("I;16") else 32, "window": None,
                "source": "full-range", "function": "LINEAR_EXACT" if im.mode == "F" else "LINEAR", "notes": ()}
    grey, notes = _pil_to_grey(path, im)
    return {"values": grey, "bits": 8, "window": None, "source": "8-bit", "function": "LINEAR", "notes": notes}


def read_native(path: Path | str, *, max_pixels: int | None = None) -> tuple[np.ndarray, NativeInfo]:
    """Decode a file into (float32 HxW values in the file's own units, info) for viewing at full bit depth.

    DICOM: stored values through the modality LUT (rescale slope/intercept), no VOI applied; the default window is
    the file's first WindowCenter/WindowWidth, else its VOI LUT's input range, else the full range. 16-bit PNG and
    TIFF: the stored values, full range by default. 8-bit and colour files: read_image's grey, shown as stored.
    Same checks, pixel cap and CxrAlError messages as read_image."""
    path = _nonempty_file(path)
    if is_dicom(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds, pixels, photometric = _open_dicom(path, max_pixels)
            try:
                found = _dicom_native(ds, pixels, photometric)
            except CxrAlError as exc:
                raise CxrAlError(f"{path}: {exc}") from exc.__cause__
            except Exception as exc:  # rescale values or LUTs that pydicom cannot apply
                raise CxrAlError(f"{path}: invalid DICOM header: cannot apply its rescale or LUT "
                                 f"({_one_line(exc, path)})") from exc
        fmt = "dicom"
    else:
        fmt, found = _decode_pil(path, max_pixels, _pil_to_native)
        found.update(photometric="MONOCHROME2", units="", modality="")
    values, (lo, hi), bad = _finite_values(found["values"])
    window = found["window"]
    if window is None:
        window = IDENTITY_WINDOW_8BIT if found["source"] == "8-bit" else full_range_window(lo, hi, found["function"])
    info = NativeInfo(fmt, found["modality"], int(values.shape[1]), int(values.shape[0]), found["bits"],
                      found["photometric"], (float(window[0]), float(window[1])), found["source"], found["function"],
                      (lo, hi), _robust_range(values), found["units"], tuple(found["notes"]) + bad)
    return values, info
