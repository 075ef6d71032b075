"""Is active learning paying off on this project? A prequential check that needs no test split.

Each training round's model scored the pool before the next labels arrived. The random share of `auto`
batches (queue strategy 'auto:random', or plain 'random' suggestions) is a uniform sample of the pool the
model had not seen, so the model's accuracy and macro-AUC on those labels, once they arrive, estimate its
accuracy on the pool without bias (prequential evaluation, Dawid 1984). The same numbers on the actively
chosen picks say whether the strategy finds images the model gets wrong: when the model is clearly less
accurate on active picks than on random ones, the active picks are the informative ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from active.engine.queue import label_source
from active.engine.rounds import current_rounds
from active.strategies.auto import RANDOM_ARM
from models.metrics import classification_metrics
from store.project import Project

N_BOOTSTRAP = 500
HARDER = "active picks are harder than random ones: the model is learning from informative images"
NO_GAIN = "no measurable gain over random yet"
TOO_FEW = "too few labels yet to tell (needs labels of the random share and of active picks after a round)"


def _scored(y: np.ndarray, probs: np.ndarray, classes: list[str], positive: str | None, seed: int) -> dict[str, Any]:
    """n, accuracy and macro-AUC with 95% bootstrap CIs (None where undefined, e.g. one class present)."""
    if len(y) == 0:
        return {"n": 0, "accuracy": None, "accuracy_ci": None, "macro_auc": None, "macro_auc_ci": None}
    metrics = classification_metrics(y, probs, classes, positive_class=positive,
                                     n_bootstrap=N_BOOTSTRAP if len(y) >= 2 else 0, seed=seed)
    ci = metrics.get("ci") or {}
    return {"n": int(len(y)), "accuracy": metrics.get("accuracy"), "accuracy_ci": ci.get("accuracy"),
            "macro_auc": metrics.get("macro_auc"), "macro_auc_ci": ci.get("macro_auc")}


def verdict(random_part: dict[str, Any], active_part: dict[str, Any]) -> str:
    """The plain sentence for one comparison: harder active picks only when the CIs of accuracy do not overlap."""
    r, a = random_part.get("accuracy_ci"), active_part.get("accuracy_ci")
    if not r or not a or random_part["n"] < 5 or active_part["n"] < 5:
        return TOO_FEW
    return HARDER if a[1] < r[0] else NO_GAIN


def efficiency(project: Project, *, seed: int = 0) -> dict[str, Any]:
    """Per training round and overall: the model's prequential accuracy / macro-AUC on the random-share labels
    and on the active picks that arrived after it, the round's test-split metric when there is one, and a
    sentence; JSON-serialisable (`cxr-al status --json` key `efficiency`)."""
    classes = project.classes
    positive = project.config.get("positive_class")
    origins = project.db.label_origins().drop_duplicates("image_id", keep="first")
    origins = origins[origins["model_round"].notna() & origins["label"].isin(classes)].copy()
    origins["source"] = origins["strategy"].map(label_source)
    origins = origins[origins["source"] != ""]
    index = {c: i for i, c in enumerate(classes)}
    rounds = current_rounds(project, "train")
    rounds = rounds[rounds["status"] == "done"]
    per_round, pooled = [], {"random": ([], []), "active": ([], [])}
    for r in rounds.itertuples(index=False):
        picks = origins[origins["model_round"].astype(int) == int(r.id)]
        test_auc = r.metrics.get("macro_auc") if r.params.get("n_test") else None  # no test split: no test metric
        row: dict[str, Any] = {"round_id": int(r.id), "n_train": r.metrics.get("n_train"), "test_macro_auc": test_auc}
        preds = (project.db.predictions(int(r.id), picks["image_id"].astype(int).tolist()) if len(picks)
                 else pd.DataFrame(columns=["image_id", "probs"]))
        probs_by_id = dict(zip(preds["image_id"].astype(int), preds["probs"], strict=True))
        picks = picks[picks["image_id"].astype(int).isin(probs_by_id)]
        for part, mask in (("random", picks["source"] == RANDOM_ARM), ("active", picks["source"] != RANDOM_ARM)):
            sub = picks[mask]
            y = sub["label"].map(index).to_numpy(np.int64)
            probs = (np.stack([np.asarray(probs_by_id[int(i)], np.float64) for i in sub["image_id"]])
                     if len(sub) else np.zeros((0, len(classes))))
            row[part] = _scored(y, probs, classes, positive, seed)
            pooled[part][0].append(y)
            pooled[part][1].append(probs)
        row["sentence"] = verdict(row["random"], row["active"])
        per_round.append(row)
    overall = {part: _scored(np.concatenate(ys) if ys else np.zeros(0, int),
                             np.concatenate(ps) if ps else np.zeros((0, len(classes))), classes, positive, seed)
               for part, (ys, ps) in pooled.items()}
    overall["sentence"] = verdict(overall["random"], overall["active"])
    return {"rounds": per_round, "overall": overall,
            "method": "prequential: each round's model scored on labels that arrived after it, random share vs "
                      "active picks, 95% bootstrap CIs"}


def efficiency_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per round for the dashboard: estimates with CIs as text, test metric, sentence."""
    def fmt(part: dict[str, Any], key: str) -> str:
        value, ci = part.get(key), part.get(f"{key}_ci")
        if value is None:
            return "—"
        return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + f" (n={part['n']})"
    return pd.DataFrame([{
        "round": r["round_id"], "labels": r["n_train"],
        "accuracy, random share": fmt(r["random"], "accuracy"), "accuracy, active picks": fmt(r["active"], "accuracy"),
        "macro-AUC, random share": fmt(r["random"], "macro_auc"),
        "test macro-AUC": "—" if r["test_macro_auc"] is None else f"{r['test_macro_auc']:.3f}",
        "verdict": r["sentence"]} for r in report["rounds"]])
