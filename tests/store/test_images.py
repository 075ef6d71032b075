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


# ----------------------------------------------------------------- hostile and compressed files
def test_oversized_png_is_refused_from_its_header_before_decoding(tmp_path: Path, monkeypatch) -> None:
    from PIL import ImageFile

    from tests.store.hostile_files import write_blank_png

    path = write_blank_png(tmp_path / "big16.png", 13000, 13000, 16)  # ~330 KB on disk, 338 MB of pixels

    def no_decoding(self):
        raise AssertionError("pixels decoded although the header says the image is over the cap")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(CxrAlError, match="too large: 13000 x 13000 = 169,000,000 pixels, over the limit of 100,000,000"):
        read_image(path, max_pixels=100_000_000)


def test_oversized_dicom_is_refused_before_its_pixels_are_read(tmp_path: Path, monkeypatch) -> None:
    import pydicom.pixels.decoders.base as decoders

    path = write_dicom(tmp_path / "wide.dcm", np.zeros((40, 50), np.uint16))
    monkeypatch.setattr(decoders.Decoder, "as_array", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(CxrAlError, match="too large: 50 x 40"):
        read_image(path, max_pixels=1999)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    from PIL import ImageOps

    img = Image.fromarray(GRADIENT, "L")
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    img.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    grey, info = read_image(tmp_path / "phone.jpg")
    assert (info.width, info.height) == (32, 64) and grey.shape == (64, 32)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "phone.jpg")).convert("L"))
    assert np.array_equal(grey, expected)


def test_fully_transparent_png_is_refused_not_black(tmp_path: Path) -> None:
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = 180
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    with pytest.raises(CxrAlError, match="fully transparent"):
        read_image(tmp_path / "clear.png")


def test_non_finite_pixels_do_not_blacken_the_image(tmp_path: Path) -> None:
    values = np.tile(np.linspace(0, 10, 64, dtype=np.float32), (32, 1))
    values[0, 0], values[0, 1], values[0, 2] = np.inf, -np.inf, np.nan
    Image.fromarray(values, "F").save(tmp_path / "float.tiff")
    grey, info = read_image(tmp_path / "float.tiff")
    assert grey[5].min() == 0 and grey[5].max() == 255 and np.all(np.diff(grey[5].astype(int)) >= 0)
    assert tuple(grey[0, :3]) == (255, 0, 0)
    assert info.notes and "3 of 2048 pixels are not finite" in info.notes[0]


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_lossless_compressed_dicom_decodes_like_the_uncompressed_file(name: str) -> None:
    """RLE, JPEG-LS and JPEG 2000 lossless through pydicom's decoder plugins give the same pixels."""
    from pydicom.data import get_testdata_file

    reference = read_grey(get_testdata_file("MR_small.dcm"))
    assert np.array_equal(read_grey(get_testdata_file(name)), reference)


def test_jpeg_lossless_and_jpeg2000_colour_dicom_decode(tmp_path: Path) -> None:
    """JPEG lossless (process 14) and JPEG 2000 YBR_RCT decode; YCbCr JPEG is converted to RGB once, not twice."""
    from pydicom.data import get_testdata_file

    rgb = read_grey(get_testdata_file("SC_rgb_dcmtk_+eb+cr.dcm"))  # JPEG baseline stored as RGB
    for name in ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm"):  # JPEG lossless RGB, JPEG YBR_FULL
        assert np.abs(read_grey(get_testdata_file(name)).astype(int) - rgb.astype(int)).mean() < 3, name
    grey, info = read_image(get_testdata_file("examples_jpeg2k.dcm"))  # JPEG 2000, YBR_RCT
    assert (info.width, info.height) == (640, 480) and grey.std() > 10


def test_multiframe_dicom_is_refused_with_a_reason(tmp_path: Path) -> None:
    from tests.store.hostile_files import write_multiframe_dicom

    with pytest.raises(CxrAlError, match="multi-frame DICOM: 4 frames"):
        read_image(write_multiframe_dicom(tmp_path / "cine.dcm", frames=4))
