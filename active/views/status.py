"""Project status: what `cxr-al status` prints and the label page and dashboard show about rounds."""

from __future__ import annotations

from typing import Any

import pandas as pd

from active.engine.artifacts import BACKGROUND_LOG, EMBEDDINGS_NAME, INDEX_DIR
from active.engine.policy import labels_since_last_train, round_due
from active.engine.rounds import current_rounds
from active.views.dashboard import CURVE_METRICS, number
from active.views.efficiency import efficiency
from active.views.leakage import grouping
from store.db import utcnow
from store.project import Project


def status(project: Project) -> dict[str, Any]:
    """Everything `cxr-al status` shows, JSON-serialisable."""
    summary = project.db.summary()
    summary["project"] = {"name": project.config.get("name"), "root": str(project.root.resolve()),
                          "classes": project.classes, "positive_class": project.config.get("positive_class"),
                          "round_policy": project.round_policy}
    summary["annotators"] = sorted(a for a in summary["labels_per_annotator"] if a != "import")
    rounds = current_rounds(project)
    summary["rounds"] = [
        {"id": int(r.id), "kind": r.kind, "status": r.status, "started_at": r.started_at,
         "finished_at": None if pd.isna(r.finished_at) else r.finished_at, "n_labels": int(r.n_labels),
         "checkpoint": r.checkpoint, "metrics": r.metrics, "error": r.error if isinstance(r.error, str) else None}
        for r in rounds.itertuples(index=False)]
    summary["pretraining"] = [
        {"round_id": r["id"], "status": r["status"], "checkpoint": r["checkpoint"],
         "final_loss": r["metrics"].get("final_loss"), "images_per_second": r["metrics"].get("images_per_second")}
        for r in summary["rounds"] if r["kind"] == "pretrain"]
    summary["embeddings"], summary["index"] = _embedding_status(project)
    summary["round_due"] = bool(round_due(project))
    summary["efficiency"] = efficiency(project)
    summary["grouping"] = grouping(project)  # patients and studies, and the groups in both splits (leakage)
    return summary


def _embedding_status(project: Project) -> tuple[int, dict[str, Any] | None]:
    """Embeddings stored and the FAISS index as it was last written (type, size, dim, checkpoint)."""
    import pyarrow.parquet as pq

    from store.index import EmbeddingIndex

    path = project.artifacts / EMBEDDINGS_NAME
    count = int(pq.read_metadata(path).num_rows) if path.exists() else 0
    meta = EmbeddingIndex.read_metadata(project.artifacts / INDEX_DIR)
    index = None if meta is None else {"type": meta["kind"], "size": meta["count"], "dim": meta["dim"],
                                       "checkpoint_tag": meta["checkpoint_tag"]}
    return count, index


def round_progress(project: Project) -> dict[str, Any]:
    """What the label page shows about training: the running round (elapsed, estimated fraction), the latest
    finished one, a failure newer than it, and how many labels until the policy fires."""
    rounds = current_rounds(project, "train")
    done = rounds[rounds["status"] == "done"]
    running = rounds[rounds["status"] == "running"]
    info: dict[str, Any] = {"running": None, "latest": None, "failed": None, "labels_to_next": None}
    if len(done):
        last = done.iloc[-1]
        info["latest"] = {"id": int(last["id"]), "n_train": int(last["params"].get("n_train", 0)),
                          "finished_at": last["finished_at"]}
    if len(running):
        row = running.iloc[-1]
        elapsed = (utcnow() - row["started_at"]).total_seconds()
        durations = (done["finished_at"] - done["started_at"]).dt.total_seconds().tail(3)
        typical = float(durations.median()) if len(durations) else None
        fraction = None if not typical else min(0.95, elapsed / typical)
        info["running"] = {"id": int(row["id"]), "elapsed_s": elapsed, "fraction": fraction,
                           "stage": "training" if typical is None else f"training (about {typical:.0f} s per round)"}
    if len(rounds) and rounds.iloc[-1]["status"] == "failed":
        info["failed"] = {"id": int(rounds.iloc[-1]["id"]), "error": str(rounds.iloc[-1]["error"])}
    every = int(project.round_policy.get("train_every") or 0)
    if every > 0:
        info["labels_to_next"] = max(0, every - labels_since_last_train(project, rounds))
    return info


# ----------------------------------------------------------------------------- rounds
def _model_description(kind: str, params: dict[str, Any], metrics: dict[str, Any], project: Project) -> str:
    if kind == "train":
        mode = metrics.get("mode") or params.get("mode") or "?"
        backbone = project.config.get("backbone", "")
        epochs = f", {params['epochs']} epochs" if mode == "finetune" and params.get("epochs") else ""
        return f"{mode} ({backbone}{epochs})"
    if kind == "pretrain":
        return f"{params.get('method', '?')} {params.get('backbone', '')}".strip()
    if kind == "embed":
        return f"embeddings ({metrics.get('index') or 'index'})"
    if kind == "simulate":
        strategies = params.get("strategies") or []
        return f"{params.get('mode', 'probe')}: {len(strategies)} strategies x {params.get('seeds', '?')} seeds"
    return kind


def round_history(project: Project) -> pd.DataFrame:
    """Every round, newest first: kind, status, when, how long, labels, model, test metrics and any error."""
    columns = ["round_id", "kind", "status", "started_at", "finished_at", "duration_s", "labels", "model",
               *CURVE_METRICS, "error"]
    rounds = current_rounds(project)
    now = utcnow()
    rows = []
    for row in rounds.sort_values("id", ascending=False).itertuples(index=False):
        metrics, params = row.metrics, row.params
        end = row.finished_at if pd.notna(row.finished_at) else (now if row.status == "running" else None)
        labels = metrics.get("n_train", params.get("n_train", row.n_labels)) if row.kind == "train" else row.n_labels
        rows.append({
            "round_id": int(row.id), "kind": row.kind, "status": row.status, "started_at": row.started_at,
            "finished_at": row.finished_at, "duration_s": (end - row.started_at).total_seconds() if end is not None
            else float("nan"), "labels": None if pd.isna(labels) else int(labels),
            "model": _model_description(row.kind, params, metrics, project),
            **{m: number(metrics.get(m)) for m in CURVE_METRICS},
            "error": row.error if isinstance(row.error, str) else None,
        })
    return pd.DataFrame(rows, columns=columns)


def running_rounds(project: Project) -> pd.DataFrame:
    """Rounds still running (round_history rows; duration_s is the time so far)."""
    history = round_history(project)
    return history[history["status"] == "running"].reset_index(drop=True)


def background_log_tail(project: Project, lines: int = 3) -> str:
    """The last lines of the background rounds' log (progress bars included), for a status panel."""
    path = project.artifacts / "rounds" / BACKGROUND_LOG
    if not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 8192))
        text = fh.read().decode("utf-8", errors="replace")
    parts = [p.strip() for p in text.replace("\r", "\n").split("\n") if p.strip()]
    return "\n".join(parts[-lines:])

