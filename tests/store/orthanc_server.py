"""A throw-away Orthanc with its DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb) for the PACS ingest
tests and benchmark: its own configuration and storage below a folder, a free port, basic auth, and no DICOM
port. Never the system service the package installs."""

from __future__ import annotations

import contextlib
import glob
import json
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import requests

ORTHANC = Path("/usr/sbin/Orthanc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dicomweb_plugin() -> str | None:
    found = sorted(glob.glob("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*")
                   + glob.glob("/usr/lib/orthanc/libOrthancDicomWeb.so*"))
    return found[0] if found else None


@contextlib.contextmanager
def running_orthanc(root: Path, user: str, password: str, timeout: float = 30.0) -> Iterator[str]:
    """Orthanc serving from root (configuration, storage, log) on a free port; yields its REST root
    (the DICOMweb root is that + /dicom-web); stopped on the way out. Only local clients are let in
    (RemoteAccessAllowed false: Orthanc 1.10 has no bind-address option)."""
    plugin = dicomweb_plugin()
    if plugin is None:
        raise RuntimeError("Orthanc is installed without its DICOMweb plugin: apt-get install orthanc-dicomweb")
    port = free_port()
    config = {"Name": "cxr-al-test", "HttpPort": port, "DicomServerEnabled": False, "DicomPort": free_port(),
              "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "storage"),
              "Plugins": [plugin], "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
              "RegisteredUsers": {user: password}, "HttpCompressionEnabled": False,
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (root / "orthanc.json").write_text(json.dumps(config))
    base = f"http://127.0.0.1:{port}"
    with open(root / "orthanc.log", "wb") as log:
        proc = subprocess.Popen([str(ORTHANC), str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not _answers(base, user, password):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start on {base} (exit code {proc.poll()}): "
                                       + (root / "orthanc.log").read_text(errors="replace")[-2000:])
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            proc.kill()  # does nothing once it has exited
            proc.wait()


def _answers(base: str, user: str, password: str) -> bool:
    try:
        return requests.get(f"{base}/system", auth=(user, password), timeout=1).ok
    except requests.ConnectionError:
        return False


def upload(base: str, files: Iterable[Path], user: str, password: str) -> int:
    """POST each DICOM file to Orthanc's /instances; returns how many."""
    n = 0
    with requests.Session() as session:
        session.auth = (user, password)
        for path in files:
            session.post(f"{base}/instances", data=Path(path).read_bytes(), timeout=30).raise_for_status()
            n += 1
    return n
