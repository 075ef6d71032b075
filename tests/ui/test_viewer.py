"""The viewer's pixel work: window presets on native values, zoom and fit, lossless PNG in a data: URI."""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from store.images import apply_window, read_native
from tests.conftest import retag_dicom, write_dicom
from ui import viewer

RAMP16 = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (64, 1))  # 0..4080 along x




@pytest.fixture
def ct(tmp_path: Path):
    """A CT-like 16-bit DICOM (rescale -1024: -1024..3056 HU) with a soft-tissue window in its header."""
    path = write_dicom(tmp_path / "ct.dcm", RAMP16, window=(40, 400), rescale=(1, -1024))
    return read_native(retag_dicom(path, Modality="CT"))


def test_ct_presets_are_the_usual_hu_windows(ct) -> None:
    values, info = ct
    assert viewer.preset_window(info, viewer.FILE_DEFAULT) == (40.0, 400.0)
    assert viewer.preset_window(info, "Lung") == (-600.0, 1500.0)
    assert viewer.preset_window(info, "Mediastinum") == (50.0, 350.0)
    assert viewer.preset_window(info, "Bone") == (400.0, 1800.0)
    shown = apply_window(values, *viewer.preset_window(info, viewer.FULL_RANGE))
    assert shown[0, 0] == 0 and shown[0, -1] == 255 and np.all(np.diff(shown[0].astype(int)) >= 0)
    with pytest.raises(ValueError, match="unknown window preset"):
        viewer.preset_window(info, "Brain")


def test_radiograph_presets_are_relative_to_its_own_range(tmp_path: Path) -> None:
    """No HU on a DX: its 1st..99th percentile stands for -1000..+1000, so Lung sits low and Bone high."""
    _, info = read_native(write_dicom(tmp_path / "dx.dcm", RAMP16, rescale=(1, 0)))
    lo, hi = info.robust_range
    assert info.units == "" and lo < 100 and hi > 4000
    lung, mediastinum, bone = (viewer.preset_window(info, p) for p in ("Lung", "Mediastinum", "Bone"))
    assert lung[0] == pytest.approx(lo + 0.2 * (hi - lo)) and lung[1] == pytest.approx(0.75 * (hi - lo))
    assert mediastinum[0] == pytest.approx(lo + 0.525 * (hi - lo))
    assert bone[0] == pytest.approx(lo + 0.7 * (hi - lo)) and bone[1] == pytest.approx(0.9 * (hi - lo))
    _, inverted = read_native(write_dicom(tmp_path / "m1.dcm", RAMP16, photometric="MONOCHROME1"))
    assert viewer.preset_window(inverted, "Lung")[0] == pytest.approx(hi - 0.2 * (hi - lo))  # flipped as shown


def test_16bit_png_gets_relative_presets_and_its_full_range_by_default(tmp_path: Path) -> None:
    arr = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit value once
    Image.fromarray(arr).save(tmp_path / "deep.png")
    values, info = read_native(tmp_path / "deep.png")
    assert viewer.preset_window(info, viewer.FILE_DEFAULT) == viewer.preset_window(info, viewer.FULL_RANGE)
    narrow = viewer.render_native(values, info, center=info.window[0], width=info.window[1] / 16)
    assert len(np.unique(narrow)) == 256  # a 1/16 window still has all 256 levels: the 16 bits are there


def test_render_zooms_fits_and_inverts(tmp_path: Path) -> None:
    big = np.tile(np.arange(0, 4000, dtype=np.uint16)[:, None], (1, 2000))  # 4000 x 2000, values down y
    values, info = read_native(write_dicom(tmp_path / "tall.dcm", big, photometric="MONOCHROME1"))
    whole = viewer.render_native(values, info, center=info.window[0], width=info.window[1])
    assert whole.shape == (1024, 512) and whole[0, 0] == 255 and whole[-1, 0] == 0  # MONOCHROME1: low is bright
    top = viewer.render_native(values, info, center=info.window[0], width=info.window[1], zoom=4, center_y=0.0)
    assert top.shape == (1000, 500) and top.min() > 190  # the top quarter only: the brightest values


def test_png_is_lossless_and_the_html_carries_it_inline(ct) -> None:
    values, info = ct
    shown = viewer.render_native(values, info, center=-600, width=1500)
    data = viewer.png(shown)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), shown)
    markup = viewer.img_html(data, alt='image "7" <b>', caption="Normal · 0.93")
    src = re.search(r'src="data:image/png;base64,([^"]+)"', markup).group(1)
    assert base64.b64decode(src) == data and "/media/" not in markup
    assert 'alt="image &quot;7&quot; &lt;b&gt;"' in markup and "Normal · 0.93" in markup


def test_native_image_is_kept_until_the_file_changes(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", RAMP16)
    first, _ = viewer.native_image(path)
    assert viewer.native_image(path)[0] is first and not first.flags.writeable  # shared, read-only
    write_dicom(path, RAMP16 // 2)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    again, _ = viewer.native_image(path)
    assert again is not first and again.max() == RAMP16.max() // 2
