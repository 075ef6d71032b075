"""Reading every ingestable format as 8-bit greyscale, with DICOM windowing and inversion."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from store.errors import CxrAlError
from store.images import is_dicom, read_grey, read_image
from tests.conftest import write_dicom

GRADIENT = np.tile(np.arange(64, dtype=np.uint8) * 4, (32, 1))


@pytest.mark.parametrize("fmt,ext", [("PNG", ".png"), ("JPEG", ".jpg"), ("BMP", ".bmp"), ("TIFF", ".tif")])
def test_plain_formats_round_trip(tmp_path: Path, fmt: str, ext: str) -> None:
    path = tmp_path / f"img{ext}"
    Image.fromarray(GRADIENT, "L").save(path, format=fmt)
    grey, info = read_image(path)
    assert grey.dtype == np.uint8 and grey.shape == (32, 64)
    assert info.format == fmt.lower() and (info.width, info.height) == (64, 32)
    tol = 3 if fmt == "JPEG" else 0
    assert np.abs(grey.astype(int) - GRADIENT.astype(int)).max() <= tol


def test_rgb_is_converted_to_grey(tmp_path: Path) -> None:
    rgb = np.stack([GRADIENT] * 3, axis=-1)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    assert np.array_equal(read_grey(tmp_path / "rgb.png"), GRADIENT)


def test_16bit_png_is_scaled_to_full_range(tmp_path: Path) -> None:
    arr = (np.arange(64, dtype=np.uint16) * 50 + 1000)[None, :].repeat(8, axis=0)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    grey = read_grey(tmp_path / "deep.png")
    assert grey.min() == 0 and grey.max() == 255
    assert np.all(np.diff(grey[0].astype(int)) >= 0)  # monotone: order of intensities kept


def test_dicom_monochrome2_window_is_applied(tmp_path: Path) -> None:
    arr = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (16, 1))  # 0..4032
    path = write_dicom(tmp_path / "win.dcm", arr, window=(1000, 500))
    grey, info = read_image(path)
    assert info.format == "dicom" and info.modality == "DX"
    row = grey[0].astype(int)
    # below the window (< 750) black, above it (> 1250) white, a ramp in between
    assert row[arr[0] < 700].max() == 0
    assert row[arr[0] > 1300].min() == 255
    inside = (arr[0] > 760) & (arr[0] < 1240)
    assert 0 < row[inside].min() < row[inside].max() < 255


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    arr = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (16, 1))
    m2 = read_grey(write_dicom(tmp_path / "m2.dcm", arr, photometric="MONOCHROME2"))
    m1 = read_grey(write_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1"))
    assert m2[0, 0] == 0 and m2[0, -1] == 255
    assert np.array_equal(m1, 255 - m2)


def test_dicom_found_by_content_without_extension(tmp_path: Path) -> None:
    arr = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 16)
    path = write_dicom(tmp_path / "no_extension", arr)
    assert is_dicom(path)
    assert read_grey(path).shape == (16, 16)


def test_dicom_without_pixels_is_a_clear_error(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "report.dcm", np.zeros((4, 4), np.uint16), with_pixels=False)
    with pytest.raises(CxrAlError, match="no image"):
        read_grey(path)


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"this is not an image at all", "not a readable image"),
])
def test_bad_files_raise_cxr_al_error(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(CxrAlError, match=match):
        read_grey(path)


def test_truncated_png_is_rejected(tmp_path: Path) -> None:
    noisy = np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(CxrAlError):
        read_grey(tmp_path / "cut.png")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CxrAlError, match="no such file"):
        read_grey(tmp_path / "nope.png")
