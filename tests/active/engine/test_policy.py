"""The round engine as users drive it: a relative project path used from other folders, concurrent label
streams, a killed `train`, resumed pretraining, a second trigger while a round runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from active.engine.policy import run_round, start_round_if_due, start_training_now
from active.engine.rounds import current_rounds, project_lock, round_lock_free
from store.errors import CxrAlError
from store.project import open_project

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow


def cxr(*args: str, cwd: Path, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "active.delivery.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _set_policy(root: Path, **policy) -> None:
    import yaml

    path = root / "project.yaml"
    config = yaml.safe_load(path.read_text())
    config["round_policy"].update(policy)
    path.write_text(yaml.safe_dump(config))


def _truth(project) -> dict[int, str]:
    pool = project.db.images("pool")
    return {int(i): Path(p).parent.name for i, p in zip(pool["id"], pool["path"], strict=True)}


def _wait_for_rounds(project, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if round_lock_free(project) and not (current_rounds(project)["status"] == "running").any():
            return
        time.sleep(0.5)
    raise AssertionError("rounds still running: " + (project.artifacts / "rounds" / "background.log").read_text()[-2000:])


@pytest.fixture(scope="module")
def ward(tmp_path_factory) -> Path:
    """A project created with a relative path (`cxr-al init ward7`), pretrained and embedded from its parent."""
    base = tmp_path_factory.mktemp("relative")
    cxr("demo-data", "data", "--n", "24", "--size", "48", "--lesion-strength", "1.5", "3", cwd=base)
    cxr("init", "ward7", "--classes", "Normal,Consolidation,GroundGlass,Interstitial", "--image-size", "48", cwd=base)
    cxr("ingest", "ward7", "data/images", "--labels-from", "folders", "--test-fraction", "0.25", cwd=base)
    cxr("pretrain", "ward7", "--epochs", "1", "--max-steps", "1", "--batch-size", "8", cwd=base)
    cxr("embed", "ward7", cwd=base)
    return base / "ward7"


def test_the_loop_runs_from_any_folder_and_the_label_path_refreshes_the_queue(ward, tmp_path) -> None:
    project = open_project(ward)
    rounds = project.db.rounds()
    recorded = [c for c in rounds["checkpoint"] if isinstance(c, str) and c]
    assert recorded and all(not Path(c).is_absolute() and c.startswith("artifacts/") for c in recorded)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cxr("suggest", str(ward), "--n", "4", cwd=Path("/"))
    _set_policy(ward, train_every=4)
    truth = _truth(project)
    ids = sorted(truth)
    picks = [next(i for i in ids if truth[i] == "Normal"), next(i for i in ids if truth[i] != "Normal")]
    picks += [i for i in ids if i not in picks][:2]
    outputs = [cxr("label", str(ward), str(i), truth[i], "--annotator", "alice", cwd=elsewhere).stdout for i in picks]
    assert "round policy fired" not in "".join(outputs[:3]) and "round policy fired" in outputs[3]
    _wait_for_rounds(project)
    train = current_rounds(project, "train")
    assert list(train["status"]) == ["done"], train["error"].tolist()
    round_id = int(train["id"].iloc[-1])
    queue = project.db.open_queue()
    assert len(queue) and (queue["model_round"] == round_id).all()  # refreshed by the automatic round
    # driven from / with the absolute path: train, status and explain all find the round's files
    out = cxr("train", str(ward), cwd=Path("/")).stdout
    assert "queued" in out
    status = cxr("status", str(ward), cwd=Path("/")).stdout
    assert "round" in status and "{" not in status and "Traceback" not in status
    cxr("explain", str(ward), str(picks[0]), "--out", str(tmp_path / "cam.png"), cwd=Path("/"))
    assert (tmp_path / "cam.png").stat().st_size > 0
    info = json.loads(cxr("status", str(ward), "--json", cwd=elsewhere).stdout)
    assert [r["status"] for r in info["rounds"] if r["kind"] == "train"] == ["done", "done"]


def test_four_concurrent_label_streams_start_exactly_one_round(ward) -> None:
    project = open_project(ward)
    before = len(current_rounds(project, "train"))
    labeled = set(project.db.current_labels()["image_id"])
    truth = _truth(project)
    free = [i for i in sorted(truth) if i not in labeled][:6]  # the 4th label fires; 2 more cannot fire again
    _set_policy(ward, train_every=4)
    script = ("import sys; from active.engine.labeling import record_label; "
              "from active.engine.policy import start_round_if_due; from store.project import open_project\n"
              "p = open_project(sys.argv[1])\n"
              "for pair in sys.argv[3:]:\n"
              "    i, lab = pair.split('=')\n"
              "    record_label(p, int(i), lab, sys.argv[2])\n"
              "    pid = start_round_if_due(p)\n"
              "    print('started' if pid else 'none', flush=True)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    streams = [subprocess.Popen([sys.executable, "-c", script, str(ward), f"reader{k}",
                                 *(f"{i}={truth[i]}" for i in free[k::4])], env=env, stdout=subprocess.PIPE,
                                text=True) for k in range(4)]
    outputs = [s.communicate(timeout=120)[0] for s in streams]
    assert all(s.returncode == 0 for s in streams)
    assert sum(o.split().count("started") for o in outputs) == 1, outputs
    _wait_for_rounds(project)
    train = current_rounds(project, "train")
    assert len(train) == before + 1 and train["status"].iloc[-1] == "done"


def test_a_second_trigger_while_a_round_runs_is_a_no_op_that_says_so(ward) -> None:
    project = open_project(ward)
    before = len(current_rounds(project, "train"))
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with project_lock(project):
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(10)
    try:
        outcome = run_round(project, in_child=False, progress=False)
        assert not outcome.started and "already running" in outcome.message
        assert start_round_if_due(project) is None
        proc = cxr("train", str(ward), cwd=ward.parent)  # another process: same answer, exit 0
        assert "already running" in proc.stdout
    finally:
        release.set()
        thread.join()
    assert len(current_rounds(project, "train")) == before


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_kill_9_of_train_kills_its_child_and_the_round_is_marked_failed(ward) -> None:
    project = open_project(ward)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-m", "active.delivery.cli", "train", str(ward), "--mode", "finetune",
                               "--epochs", "500"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, child = time.monotonic() + 120, None
    while time.monotonic() < deadline and child is None:
        kids = _children(parent.pid)
        child = kids[0] if kids else None
        time.sleep(0.2)
    assert child is not None, "the train job never started"
    running = current_rounds(project, "train")
    assert running["status"].iloc[-1] == "running"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 15
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the job child survived its parent"
    rounds = current_rounds(project, "train")
    assert rounds["status"].iloc[-1] == "failed" and "ended without finishing" in rounds["error"].iloc[-1]
    outcome = run_round(project, mode="probe", in_child=False, progress=False)
    assert outcome.started and current_rounds(project, "train")["status"].iloc[-1] == "done"


def test_pretrain_resume_continues_from_the_last_checkpoint(ward) -> None:
    project = open_project(ward)
    first = project.db.rounds("pretrain")
    out = cxr("pretrain", str(ward), "--epochs", "2", "--max-steps", "2", "--batch-size", "8", "--resume",
              cwd=Path("/")).stdout
    assert "pretrained" in out
    rounds = project.db.rounds("pretrain")
    resumed = rounds.iloc[-1]
    assert resumed["status"] == "done"
    assert resumed["params"]["resumed_from"] == f"artifacts/rounds/{int(first['id'].iloc[-1]):04d}-pretrain"
    earlier = first.iloc[-1]["metrics"]["losses"]
    assert len(resumed["metrics"]["losses"]) == 2  # the first epoch's loss comes back from the checkpoint
    assert resumed["metrics"]["losses"][0] == pytest.approx(earlier[0])


def test_label_with_a_bad_policy_stores_nothing_and_says_one_line(ward) -> None:
    project = open_project(ward)
    before = len(project.db.label_history())
    path = ward / "project.yaml"
    good = path.read_text()
    try:
        for bad in ("train_every: twenty", 'round_policy: "abc"', "round_polcy: {}", "image_size: big"):
            text = good.replace("train_every: 4", bad) if "train_every" in bad else good + bad + "\n"
            path.write_text(text)
            proc = cxr("label", str(ward), "1", "Normal", "--annotator", "bob", cwd=ward.parent, ok=False)
            assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (bad, proc.stderr)
    finally:
        path.write_text(good)
    assert len(project.db.label_history()) == before


def test_train_now_needs_two_classes(tmp_path) -> None:
    from store.phantoms import PHANTOM_CLASSES
    from store.project import init_project

    project = init_project(tmp_path / "empty", list(PHANTOM_CLASSES), image_size=32)
    with pytest.raises(CxrAlError, match="two classes"):
        start_training_now(project, "lena")
    assert project.db.events("train_requested").empty



def test_update_round_policy_sets_the_random_share_and_reads_the_training_modes(tmp_path) -> None:
    """random_share (0..1) is saved to project.yaml and logged; a bad share or mode changes nothing; the modes
    offered are active.engine.jobs.TRAIN_MODES."""
    import yaml

    from active.engine.jobs import TRAIN_MODES
    from active.engine.policy import update_round_policy
    from store.project import init_project

    project = init_project(tmp_path / "p", ["Normal", "Consolidation"], image_size=32)
    assert project.round_policy["random_share"] == 0.2
    before = (project.root / "project.yaml").read_text()
    for bad in ({"random_share": 1.5}, {"random_share": -0.1}, {"random_share": "half"}, {"random_share": True},
                {"mode": "magic"}, {"double_read_fraction": 2}):
        with pytest.raises(CxrAlError, match=next(iter(bad))):
            update_round_policy(project, "lena", **bad)
    assert (project.root / "project.yaml").read_text() == before

    policy = update_round_policy(project, "lena", random_share=0.35, mode=TRAIN_MODES[-1])
    assert policy["random_share"] == 0.35 and policy["mode"] == TRAIN_MODES[-1]
    saved = yaml.safe_load((project.root / "project.yaml").read_text())["round_policy"]
    assert saved["random_share"] == 0.35 and open_project(project.root).round_policy["random_share"] == 0.35
    change = project.db.events("round_policy_changed")
    assert change["actor"].tolist() == ["lena"]
    assert json.loads(change["payload"].iloc[-1])["changes"]["random_share"] == [0.2, 0.35]
    assert update_round_policy(project, "lena", random_share=0)["random_share"] == 0.0
