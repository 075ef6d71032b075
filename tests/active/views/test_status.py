"""Round history, running and killed rounds, the background log, as the status views show them."""

from __future__ import annotations

import pytest

from active.engine import artifacts, policy
from active.views import status
from store.errors import CxrAlError


def test_round_history_with_failed_round_and_running_rounds(proj) -> None:
    project, _ = proj
    history = status.round_history(project)
    assert history["round_id"].tolist() == [6, 5, 4, 3, 2, 1]  # newest first
    failed = history[history["status"] == "failed"]
    assert failed["round_id"].tolist() == [3]
    assert "CUDA out of memory" in failed["error"].iloc[0] and failed["model"].iloc[0].startswith("finetune")
    row = history.set_index("round_id").loc[5]
    assert row["macro_auc"] == pytest.approx(0.8) and row["labels"] == 16 and row["duration_s"] >= 0
    assert history.set_index("round_id").loc[1, "model"] == "simclr resnet18"
    assert status.running_rounds(project).empty
    running = project.db.start_round("train", {"mode": "probe"})
    now = status.running_rounds(project)
    assert now["round_id"].tolist() == [running] and now["duration_s"].iloc[0] >= 0
    with pytest.raises(CxrAlError, match="already running"):
        policy.start_training_now(project, "lena")


def test_dashboard_sees_a_killed_round_as_failed(proj) -> None:
    """A round whose process died (kill -9) is failed on the dashboard too, and does not block Train now."""
    import socket
    import subprocess
    import sys

    project, _ = proj
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = project.db.start_round("train", {"pid": dead.pid, "host": socket.gethostname()})
    row = status.round_history(project).set_index("round_id").loc[gone]
    assert row["status"] == "failed" and "ended without finishing" in row["error"]
    assert status.running_rounds(project).empty


def test_background_log_tail_reads_progress_bars(proj) -> None:
    project, _ = proj
    assert status.background_log_tail(project) == ""
    log = project.artifacts / "rounds" / artifacts.BACKGROUND_LOG
    log.parent.mkdir(parents=True)
    log.write_text("embedding\nfit:  10%|#\rfit:  50%|#####\rfit: 100%|##########\n")
    assert status.background_log_tail(project, lines=2) == "fit:  50%|#####\nfit: 100%|##########"

