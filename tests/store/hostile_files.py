"""Files that have broken ingests: crafted DICOM headers, decompression bombs, odd names and folder traps.

Each writer makes one small file (or folder) and returns its path; tests/store/test_ingest.py ingests them.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import write_dicom

RAMP = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (16, 1))  # 16 x 64, values 0..4032


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_blank_png(path: Path, width: int, height: int, bit_depth: int) -> Path:
    """A valid greyscale PNG of zeros, streamed through zlib: a few hundred KB on disk for any size."""
    row = b"\0" * (1 + (width * bit_depth + 7) // 8)  # filter byte + packed samples
    comp = zlib.compressobj(9)
    parts, block = [], row * max(1, (1 << 22) // len(row))
    rows_per_block = len(block) // len(row)
    for start in range(0, height, rows_per_block):
        parts.append(comp.compress(block[: len(row) * min(rows_per_block, height - start)]))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts))
                          + _chunk(b"IEND", b""))
    return Path(path)


def write_dicom_with(path: Path, *elements: tuple[int, str, object]) -> Path:
    """A good 16-bit DICOM (RAMP), then (tag, VR, value) elements set raw, past pydicom's validation."""
    from pydicom import dcmread

    write_dicom(path, RAMP)
    ds = dcmread(path)
    for tag, vr, value in elements:
        ds.add_new(tag, vr, "0")
        ds[tag]._value = value  # as a broken writer would have stored it
    ds.save_as(path)
    return Path(path)


def write_short_voi_lut_dicom(path: Path) -> Path:
    """A DICOM whose VOI LUT descriptor promises 4096 entries and holds 2."""
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    write_dicom(path, RAMP)
    ds = dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "OW", b"\x00\x01\x02\x03")
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(path)
    return Path(path)


def write_multiframe_dicom(path: Path, frames: int = 3) -> Path:
    from pydicom import dcmread

    write_dicom(path, RAMP)
    ds = dcmread(path)
    ds.NumberOfFrames = frames
    ds.PixelData = np.concatenate([RAMP] * frames).tobytes()
    ds.save_as(path)
    return Path(path)


def make_deep_folder(root: Path, depth: int, name: str = "d") -> Path:
    """root/d/d/.../d (depth levels), made relative to an open folder so no path limit applies; returns the
    deepest folder as a path (which may be too long for the system to open)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    return Path(root, *([name] * depth))


def write_file_at(root: Path, parts: list[str], data: bytes) -> None:
    """Write data to root/parts... through folder descriptors (the whole path may exceed PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        out = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=fd)
        try:
            os.write(out, data)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def png_bytes_of(pixels: np.ndarray, **save) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", **save)
    return buf.getvalue()


def remove_tree(root: Path) -> None:
    """shutil.rmtree for trees that break it: every folder is first moved up to root (through folder
    descriptors, no recursion, no long paths), then the two-level tree left is removed."""
    import shutil

    if not os.path.lexists(root):
        return
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        todo = [os.dup(root_fd)]
        moved = 0
        while todo:
            fd = todo.pop()
            try:
                at_root = os.path.samestat(os.fstat(fd), os.fstat(root_fd))
                names = [e.name for e in os.scandir(fd) if e.is_dir(follow_symlinks=False)]
                for name in names:
                    if not at_root:
                        moved += 1
                        new = f".flat{moved}"
                        os.rename(name, new, src_dir_fd=fd, dst_dir_fd=root_fd)
                        name, parent = new, root_fd
                    else:
                        parent = fd
                    todo.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=parent))
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
    shutil.rmtree(root)
