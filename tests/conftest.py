"""Shared fixtures: phantom images, DICOM files and small projects, all generated on the fly."""

from __future__ import annotations

import os

# Set before numpy/torch load: OpenBLAS and OpenMP threads busy-wait, which makes linear algebra 10-40x
# slower when test processes (and the training children they start) share a 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("CXR_AL_BUSY_TIMEOUT", "10")

try:  # keep torch from fighting over the two cores of a CI machine
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
except ImportError:  # pragma: no cover
    pass


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2",
                window: tuple[float, float] | None = None, rescale: tuple[float, float] | None = None,
                patient_name: str = "Doe^Jane", with_pixels: bool = True, preamble: bool = True) -> Path:
    """Write a minimal but valid DICOM Part 10 file (Digital X-Ray) with the given pixels."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = "PID-12345"
    ds.Modality = "DX"
    if with_pixels:
        arr = np.asarray(pixels)
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        bits = 16 if arr.dtype == np.uint16 else 8
        ds.BitsAllocated = bits
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 0
        ds.PixelData = arr.tobytes()
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.save_as(str(path), enforce_file_format=preamble)
    return Path(path)


@pytest.fixture
def phantom_dir(tmp_path: Path) -> Path:
    """40 phantoms (10 per class) at 64 px in ImageFolder layout, with masks and labels.csv."""
    from store.phantoms import write_phantom_dataset

    return write_phantom_dataset(tmp_path / "phantoms", n=40, seed=3, size=64)


@pytest.fixture
def project(tmp_path: Path):
    """An empty project with the four phantom classes."""
    from store.phantoms import PHANTOM_CLASSES
    from store.project import init_project

    return init_project(tmp_path / "project", list(PHANTOM_CLASSES), image_size=64)


@pytest.fixture
def ingested_project(project, phantom_dir):
    """The phantom project with all 40 phantoms ingested as hidden ground truth (20% test)."""
    from store.ingest import ingest_folder

    ingest_folder(project.db, phantom_dir / "images", project.classes, labels_from="folders",
                  labels_as="oracle", test_fraction=0.2, seed=0)
    return project


def embedded_phantom_project(root: Path, *, seed: int, test_fraction: float):
    """120 phantoms with clear findings at 32 px, ground truth hidden as oracle labels, embedded by an
    un-pretrained backbone (fast): a project ready for suggest and probe rounds."""
    from active.engine.rounds import embed
    from store.ingest import ingest_folder
    from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset
    from store.project import init_project

    data = write_phantom_dataset(root / "data", n=120, seed=seed, size=32, lesion_strength=(1.5, 3.0))
    project = init_project(root / "project", list(PHANTOM_CLASSES), image_size=32)
    ingest_folder(project.db, data / "images", project.classes, labels_from="folders", test_fraction=test_fraction,
                  seed=0)
    embed(project, init="random", in_child=False, progress=False)
    return project


def retag_dicom(path: Path, **tags) -> Path:
    """Set DICOM attributes on a written file (e.g. Modality='CT')."""
    import pydicom

    ds = pydicom.dcmread(path)
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(path)
    return path
