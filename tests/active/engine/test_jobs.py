"""Typed job specs: JSON round trips, refused specs, and a tiny job run in a child process on phantoms."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from active.engine.jobs import (
    ERROR_NAME,
    JOBS,
    RESULT_NAME,
    SPEC_NAME,
    EmbedJob,
    JobFailed,
    PretrainJob,
    TrainJob,
    job_from_dict,
    job_from_json,
    run_in_child,
)
from store.errors import CxrAlError

SPECS = [
    PretrainJob(paths=("a.png", "b.png"), method="simclr", backbone="resnet18", init="random", epochs=2,
                batch_size=8, image_size=32, augment="gentle", max_steps=3, out_dir="/tmp/out"),
    EmbedJob(paths=("a.png",), checkpoint=None, backbone="resnet18", image_size=32, progress=False),
    TrainJob(mode="probe", classes=("Normal", "Consolidation"), positive_class="Consolidation", all_ids=(4, 7, 9),
             all_paths=("a.png", "b.png", "c.png"), train_pos=(0, 1), train_y=(0, 1), test_pos=(2,), test_y=(1,),
             vectors="v.npy", seed=np.int64(3)),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.task)
def test_spec_round_trips_through_json(spec) -> None:
    text = spec.to_json()
    assert json.loads(text)["task"] == spec.task
    back = job_from_json(text)
    assert type(back) is type(spec) and back == spec
    assert JOBS[spec.task] is type(spec)


def test_unknown_task_field_or_mode_is_refused() -> None:
    with pytest.raises(CxrAlError, match="unknown job 'distill'"):
        job_from_dict({"task": "distill", "out_dir": "x"})
    data = json.loads(SPECS[1].to_json())
    with pytest.raises(CxrAlError, match="unknown field.*colour"):
        job_from_dict({**data, "colour": "red"})
    del data["paths"]
    with pytest.raises(CxrAlError, match="missing field.*paths"):
        job_from_dict(data)
    with pytest.raises(CxrAlError, match="unknown training mode 'boost'"):
        replace(SPECS[2], mode="boost")
    with pytest.raises(CxrAlError, match="needs the embeddings"):
        replace(SPECS[2], vectors=None)


def test_tiny_embed_job_runs_in_a_child_and_a_failure_says_why(tmp_path) -> None:
    from store.phantoms import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", n=4, seed=1, size=32)
    paths = tuple(sorted(str(p) for p in (data / "images").rglob("*.png")))
    spec = EmbedJob(paths=paths, checkpoint=None, backbone="resnet18", image_size=32, batch_size=4, device="cpu",
                    progress=False, out_dir=str(tmp_path / "job"))
    result = run_in_child(spec)
    vectors = np.load(result["vectors"])
    assert vectors.shape == (4, 512) and result["count"] == 4
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert job_from_json((tmp_path / "job" / SPEC_NAME).read_text()) == spec
    assert json.loads((tmp_path / "job" / RESULT_NAME).read_text())["dim"] == 512

    broken = replace(spec, paths=(str(tmp_path / "missing.png"),), out_dir=str(tmp_path / "broken"))
    with pytest.raises(JobFailed, match="embed job failed"):
        run_in_child(broken)
    assert (tmp_path / "broken" / ERROR_NAME).exists() and not (tmp_path / "broken" / RESULT_NAME).exists()


def test_a_child_of_pid_1_is_not_taken_for_an_orphan(tmp_path) -> None:
    """In a container without an init, the process starting a job is pid 1: its child must still run."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    code = ("import subprocess, sys; from active.engine.jobs import die_with_parent; "
            "sys.exit(subprocess.Popen(['true'], preexec_fn=die_with_parent()).wait())")
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a pid namespace here")
    done = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(Path(__file__).resolve().parents[3]), timeout=60)
    assert done.returncode == 0, done.stderr
