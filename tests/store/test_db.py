"""The project database: schema, labels and their history, durability under kill -9, busy projects."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from store.db import SCHEMA_VERSION, ProjectDB
from store.errors import CxrAlError, ProjectBusyError

REPO = Path(__file__).resolve().parents[2]


def _child(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_schema_version_and_refuse_overwrite(project) -> None:
    assert project.db.schema_version() == SCHEMA_VERSION
    with pytest.raises(CxrAlError, match="already exists"):
        project.db.create()
    assert project.db.migrate() == SCHEMA_VERSION  # idempotent at the current version


def test_newer_schema_is_refused(project) -> None:
    con = duckdb.connect(str(project.db.path))
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    con.close()
    with pytest.raises(CxrAlError, match="newer"):
        project.db.migrate()


def test_label_supersedes_same_annotator_only_and_undo_restores(ingested_project) -> None:
    db = ingested_project.db
    first = db.add_label(1, "Normal", "alice")
    db.add_label(1, "GroundGlass", "bob")
    second = db.add_label(1, "Consolidation", "alice")
    current = db.current_labels()
    assert sorted(current["label"]) == ["Consolidation", "GroundGlass"]
    history = db.label_history(1)
    assert len(history) == 3
    assert int(history.loc[history["id"] == first, "superseded_by"].iloc[0]) == second

    undone = db.undo_last_label("alice")
    assert undone["label_id"] == second
    current = db.current_labels()
    assert sorted(current["label"]) == ["GroundGlass", "Normal"]  # alice's first label is current again
    assert len(db.label_history(1)) == 3  # nothing is deleted


def test_unknown_image_is_refused_and_nothing_written(ingested_project) -> None:
    with pytest.raises(CxrAlError, match="no image with id 9999"):
        ingested_project.db.add_label(9999, "Normal", "alice")
    assert ingested_project.db.label_history().empty


def test_failed_round_keeps_labels(ingested_project) -> None:
    db = ingested_project.db
    db.add_label(2, "Normal", "alice")
    rid = db.start_round("train", {"mode": "probe"})
    db.fail_round(rid, "RuntimeError: out of memory")
    rounds = db.rounds()
    assert rounds.loc[0, "status"] == "failed" and "out of memory" in rounds.loc[0, "error"]
    assert len(db.current_labels()) == 1


def test_acknowledged_labels_survive_kill_9(ingested_project) -> None:
    """A child writes labels and prints each id after the call returns; SIGKILL it mid-stream."""
    child = _child("""
        import sys
        from store.db import ProjectDB
        db = ProjectDB(sys.argv[1])
        i = 0
        while True:
            label_id = db.add_label(1 + i % 30, ["Normal", "GroundGlass"][i % 2], f"reader{i % 3}")
            print(label_id, flush=True)
            i += 1
        """, str(ingested_project.db.path))
    acked = []
    deadline = time.monotonic() + 60
    while len(acked) < 40 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        acked.append(int(line))
    child.send_signal(signal.SIGKILL)
    rest, err = child.communicate(timeout=30)
    acked += [int(x) for x in rest.split()]
    assert len(acked) >= 40, err
    history = ingested_project.db.label_history()  # opens cleanly: the file is readable
    assert set(acked) <= set(history["id"].astype(int))


def test_busy_project_waits_then_fails_clearly_then_works(ingested_project) -> None:
    holder = _child("""
        import sys, time, duckdb
        con = duckdb.connect(sys.argv[1])
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
        con.close()
        print("released", flush=True)
        """, str(ingested_project.db.path), "2.5")
    assert holder.stdout.readline().strip() == "held"
    impatient = ProjectDB(ingested_project.db.path, busy_timeout=0.3)
    start = time.monotonic()
    with pytest.raises(ProjectBusyError, match="project is busy"):
        impatient.summary()
    assert time.monotonic() - start < 2.0
    patient = ProjectDB(ingested_project.db.path, busy_timeout=20)
    label_id = patient.add_label(3, "Normal", "alice")  # waits for the holder, then writes
    holder.wait(timeout=30)
    assert label_id in set(patient.label_history()["id"].astype(int))


def test_two_writer_processes_lose_nothing(ingested_project) -> None:
    code = """
        import sys
        from store.db import ProjectDB
        db = ProjectDB(sys.argv[1], busy_timeout=60)
        for i in range(25):
            print(db.add_label(1 + i, "Normal", sys.argv[2]), flush=True)
        """
    writers = [_child(code, str(ingested_project.db.path), name) for name in ("w1", "w2")]
    acked = []
    for w in writers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        acked += [int(x) for x in out.split()]
    assert len(acked) == 50
    current = ingested_project.db.current_labels()
    assert len(current) == 50 and set(acked) == set(current["label_id"].astype(int))


def test_events_log_is_appended(ingested_project) -> None:
    ingested_project.db.add_label(4, "Normal", "alice")
    kinds = list(ingested_project.db.events()["kind"])
    assert "label" in kinds and "ingest" in kinds


def test_open_project_migrates_recorded_paths_to_the_project_root(tmp_path) -> None:
    """Projects from before schema v2 recorded checkpoints relative to the working folder or absolute: opening
    one rewrites them relative to the project root, and they resolve from any working folder."""
    import duckdb

    from active.engine.rounds import latest_round
    from store.db import SCHEMA_VERSION
    from store.project import init_project, open_project

    root = tmp_path / "ward7"
    project = init_project(root, ["Normal", "COVID-19"])
    for n in (1, 2):
        folder = root / "artifacts" / "rounds" / f"000{n}-pretrain"
        folder.mkdir(parents=True)
        (folder / "backbone.pt").write_bytes(b"weights")
    old = [("ward7/artifacts/rounds/0001-pretrain/backbone.pt"),  # written by `cxr-al init ward7` from tmp_path
           str(root / "artifacts" / "rounds" / "0002-pretrain" / "backbone.pt"), "/elsewhere/model.pt"]
    ids = [project.db.start_round("pretrain", {}) for _ in old]
    for round_id, path in zip(ids, old, strict=True):
        project.db.finish_round(round_id, checkpoint=path)
    con = duckdb.connect(str(root / "project.duckdb"))
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()

    reopened = open_project(root)
    assert reopened.db.schema_version() == SCHEMA_VERSION
    recorded = reopened.db.rounds("pretrain")["checkpoint"].tolist()
    assert recorded == ["artifacts/rounds/0001-pretrain/backbone.pt", "artifacts/rounds/0002-pretrain/backbone.pt",
                        "/elsewhere/model.pt"]  # outside the project: kept as it was
    reopened.db.fail_round(ids[2], "gone")
    assert Path(latest_round(reopened, "pretrain")["checkpoint"]).read_bytes() == b"weights"


def test_v3_image_identifiers_and_project_secret(project) -> None:
    ids = project.db.add_images([{"path": "a.png", "sha256": "h1", "size_bytes": 1, "width": 2, "height": 2,
                                  "format": "png", "modality": None, "split": "pool", "patient_key": "p1",
                                  "study_uid": "1.2.3", "series_uid": "1.2.3.4", "sop_uid": "1.2.3.4.5"},
                                 {"path": "b.png", "sha256": "h2", "size_bytes": 1, "width": 2, "height": 2,
                                  "format": "png", "modality": None, "split": "pool"}])
    rows = project.db.images().set_index("path")
    assert rows.loc["a.png", ["patient_key", "study_uid", "series_uid", "sop_uid"]].tolist() == [
        "p1", "1.2.3", "1.2.3.4", "1.2.3.4.5"]
    assert rows.loc["b.png", ["patient_key", "sop_uid"]].isna().all()
    assert len(ids) == 2
    first = project.db.secret("pseudonym")
    assert len(first) == 32 and project.db.secret("pseudonym") == first  # created once, then kept
    assert project.db.secret("signin") != first
