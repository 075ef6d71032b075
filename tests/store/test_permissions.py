"""Project files are private: the folder, the database (password hashes), project.yaml, artifacts and exports
are the user's only, whatever the umask the user runs `cxr-al` under."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset
from store.project import CONFIG_NAME, DB_NAME, init_project

REPO = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cli(*args: str) -> subprocess.CompletedProcess:
    """`cxr-al ARGS` in a child started with the common, permissive umask 022."""
    return subprocess.run([sys.executable, "-m", "active.delivery.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                          umask=0o022)


def test_init_ingest_and_export_create_private_files(tmp_path):
    data = write_phantom_dataset(tmp_path / "phantoms", n=12, seed=1, size=48)
    root = tmp_path / "project"
    assert cli("init", str(root), "--classes", ",".join(PHANTOM_CLASSES),
               "--image-size", "32").returncode == 0
    ingested = cli("ingest", str(root), str(data / "images"), "--labels-from", "folders", "--as", "labels")
    assert ingested.returncode == 0, ingested.stderr
    exported = cli("export", str(root), str(tmp_path / "out.csv"), "--format", "csv")
    assert exported.returncode == 0, exported.stderr

    assert mode(root) == 0o700
    assert mode(root / DB_NAME) == 0o600 and mode(root / CONFIG_NAME) == 0o600
    assert mode(tmp_path / "out.csv") & 0o077 == 0
    for path in root.rglob("*"):  # whatever else the commands left there (artifacts, logs)
        assert mode(path) & 0o077 == 0, f"{path} is {oct(mode(path))}"


def test_init_project_is_private_under_a_permissive_umask(tmp_path):
    """Library callers (the app, tests, notebooks) get the same, without the CLI's umask."""
    previous = os.umask(0o022)
    try:
        project = init_project(tmp_path / "lib", ["Normal", "Nodule"])
        project.config["round_policy"]["train_every"] = 5
        project.save_config()  # a rewritten project.yaml stays private too
    finally:
        os.umask(previous)
    assert mode(project.root) == 0o700
    assert mode(project.root / DB_NAME) == 0o600 and mode(project.root / CONFIG_NAME) == 0o600
