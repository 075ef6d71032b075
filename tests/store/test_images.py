"""Reading every ingestable format as 8-bit greyscale, with DICOM windowing and inversion."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from store.errors import CxrAlError
from store.images import is_dicom, read_grey, read_image
from tests.conftest import retag_dicom, write_dicom

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


# ----------------------------------------------------------------- native values for the viewer
RAMP16 = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (16, 1))  # 0..4032, 12 bits used




def test_native_dicom_keeps_rescaled_values_and_the_files_window(tmp_path: Path) -> None:
    from store.images import apply_window, read_native

    path = write_dicom(tmp_path / "ct.dcm", RAMP16, window=(40, 400), rescale=(1, -1024))
    values, info = read_native(path)
    assert values.dtype == np.float32 and np.array_equal(values, RAMP16.astype(np.float32) - 1024)
    assert (info.format, info.bits_stored, info.photometric) == ("dicom", 16, "MONOCHROME2")
    assert info.window == (40.0, 400.0) and info.window_source == "dicom-window"
    assert info.value_range == (-1024.0, 3008.0) and info.units == ""
    grey = apply_window(values, *info.window)
    # DICOM LINEAR: black at or below 40 - 0.5 - 399/2 = -160, white above 239, 256 levels in between
    assert grey[0][values[0] <= -160].max() == 0 and grey[0][values[0] > 239].min() == 255
    assert np.array_equal(grey, read_grey(path))  # the file default is what ingest and the models see


def test_native_window_matches_pydicom_linear_windowing(tmp_path: Path) -> None:
    import pydicom
    from pydicom.pixels import apply_voi_lut

    from store.images import apply_window, read_native

    path = write_dicom(tmp_path / "w.dcm", RAMP16, window=(1000, 500), rescale=(2, -1024))
    values, info = read_native(path)
    ds = pydicom.dcmread(path)
    low, high = -1024, 65535 * 2 - 1024  # pydicom's output range: the stored range, rescaled
    expected = (apply_voi_lut(values.astype(np.float64), ds) - low) / (high - low) * 255
    assert np.abs(apply_window(values, *info.window).astype(float) - expected).max() <= 0.5 + 1e-6


def test_native_monochrome1_is_flagged_and_shown_inverted(tmp_path: Path) -> None:
    from store.images import apply_window, read_native

    m1, info1 = read_native(write_dicom(tmp_path / "m1.dcm", RAMP16, photometric="MONOCHROME1", window=(2000, 1000)))
    m2, info2 = read_native(write_dicom(tmp_path / "m2.dcm", RAMP16, window=(2000, 1000)))
    assert np.array_equal(m1, m2)  # the values are the file's; only the display flips
    assert info1.inverted and not info2.inverted
    shown1 = apply_window(m1, *info1.window, invert=info1.inverted)
    assert np.array_equal(shown1, 255 - apply_window(m2, *info2.window))
    assert shown1[0, 0] == 255 and shown1[0, -1] == 0  # low values bright, as MONOCHROME1 means
    assert np.array_equal(shown1, read_grey(tmp_path / "m1.dcm"))


def test_native_ct_is_in_hounsfield_units(tmp_path: Path) -> None:
    from store.images import read_native

    path = retag_dicom(write_dicom(tmp_path / "ct.dcm", RAMP16, rescale=(1, -1024)), Modality="CT")
    assert read_native(path)[1].units == "HU"
    path = retag_dicom(write_dicom(tmp_path / "dx.dcm", RAMP16, rescale=(1, -1024)), RescaleType="HU")
    assert read_native(path)[1].units == "HU"


def test_native_window_falls_back_to_the_voi_lut_then_the_full_range(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    from store.images import apply_window, read_native

    path = write_dicom(tmp_path / "lut.dcm", RAMP16)
    _, info = read_native(path)
    assert info.window_source == "full-range"
    assert np.array_equal(apply_window(read_native(path)[0], *info.window), read_grey(path))
    lut = Dataset()
    lut.LUTDescriptor = [1024, 512, 16]
    lut.LUTData = np.arange(0, 65536, 64, dtype=np.uint16).tobytes()
    retag_dicom(path, VOILUTSequence=[lut])
    _, info = read_native(path)
    assert info.window_source == "dicom-voi-lut" and info.window == (1024.0, 1024.0)  # inputs 512..1535


def test_native_16bit_png_keeps_every_value(tmp_path: Path) -> None:
    from store.images import apply_window, read_native

    arr = (np.arange(64, dtype=np.uint16) * 997 + 1000)[None, :].repeat(8, axis=0)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    values, info = read_native(tmp_path / "deep.png")
    assert np.array_equal(values, arr.astype(np.float32)) and len(np.unique(values)) == 64
    assert (info.format, info.bits_stored, info.window_source) == ("png", 16, "full-range")
    assert info.value_range == (1000.0, float(arr.max()))
    assert np.abs(apply_window(values, *info.window).astype(int) - read_grey(tmp_path / "deep.png")).max() <= 1


def test_native_8bit_png_is_shown_as_stored(tmp_path: Path) -> None:
    from store.images import IDENTITY_WINDOW_8BIT, apply_window, read_native

    Image.fromarray(GRADIENT, "L").save(tmp_path / "g.png")
    values, info = read_native(tmp_path / "g.png")
    assert info.bits_stored == 8 and info.window == IDENTITY_WINDOW_8BIT
    assert np.array_equal(apply_window(values, *info.window), GRADIENT)


def test_native_float_tiff_uses_linear_exact_and_repairs_non_finite_pixels(tmp_path: Path) -> None:
    from store.images import apply_window, read_native

    values = np.tile(np.linspace(0, 0.5, 64, dtype=np.float32), (32, 1))
    values[0, 0], values[0, 1] = np.inf, np.nan
    Image.fromarray(values, "F").save(tmp_path / "float.tiff")
    native, info = read_native(tmp_path / "float.tiff")
    assert info.voi_function == "LINEAR_EXACT" and info.value_range == (0.0, 0.5)
    assert "2 of 2048 pixels are not finite" in info.notes[0] and np.isfinite(native).all()
    shown = apply_window(native, *info.window, voi_function=info.voi_function)
    assert shown[5, 0] == 0 and shown[5, -1] == 255 and tuple(shown[0, :2]) == (255, 0)


def test_native_reading_has_read_images_checks(tmp_path: Path) -> None:
    from store.images import read_native

    with pytest.raises(CxrAlError, match="no such file"):
        read_native(tmp_path / "nope.dcm")
    with pytest.raises(CxrAlError, match="too large: 64 x 16"):
        read_native(write_dicom(tmp_path / "wide.dcm", RAMP16), max_pixels=1000)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(CxrAlError, match="not a readable image"):
        read_native(tmp_path / "bad.png")
