"""What the label page shows beside an image: Grad-CAM++ of the round model and FAISS neighbours."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pandas as pd

from active.engine.rounds import artifact_path
from active.views.export import export_frame
from store.errors import CxrAlError
from store.project import Project

ROUND_MODELS_KEPT = 2  # the latest round's model and one a reviewer picked; a ResNet-18 is ~45 MB


class RoundModelCache:
    """Round models loaded once per process, keyed by (checkpoint path, mtime, size), the least recently used
    dropped beyond `size`: the app explains image after image with the same model, and a rewritten checkpoint
    is a new model. Loading is single-flight, so the label page's prefetch thread and the page itself never
    load one model twice at once."""

    def __init__(self, size: int = ROUND_MODELS_KEPT):
        self.size = size
        self.loads = 0  # models read from disk so far (the tests count them)
        self._models: OrderedDict[tuple[str, int, int], tuple[Any, dict[str, Any], threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, checkpoint: str | Path) -> tuple[Any, dict[str, Any], threading.Lock]:
        """(model in eval mode, checkpoint metadata, the lock to hold while hooking the model's layers)."""
        path = Path(checkpoint).resolve()
        try:
            stat = path.stat()
        except OSError as exc:
            raise CxrAlError(f"no checkpoint at {path}: was the round's folder moved or deleted?") from exc
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            entry = self._models.get(key)
            if entry is None:
                from models.round_model import load_round_model

                model, meta = load_round_model(path)
                entry = (model, meta, threading.Lock())
                for stale in [k for k in self._models if k[0] == key[0]]:  # an older version of this file
                    del self._models[stale]
                self._models[key] = entry
                self.loads += 1
                while len(self._models) > self.size:
                    self._models.popitem(last=False)
            self._models.move_to_end(key)
            return entry


ROUND_MODELS = RoundModelCache()


def explain(project: Project, image_ids: list[int], *, class_name: str | None = None,
            round_id: int | None = None) -> list[dict[str, Any]]:
    """Grad-CAM++ of the latest (or a given) training round's model for some images: for each, the
    heatmap (S x S in [0, 1]), an overlay PNG at the image's resolution, the explained class and the probabilities.

    The model is loaded once per process (ROUND_MODELS) and all the images are explained in batches."""
    from active.engine.rounds import latest_round
    from models.gradcam import explain_batch, overlay_png
    from store.images import read_grey

    if round_id is None:
        last = latest_round(project, "train")
        if last is None:
            raise CxrAlError("no trained model yet: run a training round (`cxr-al train`) first")
        checkpoint = last["checkpoint"]
    else:
        rounds = project.db.rounds("train")
        match = rounds[(rounds["id"] == round_id) & (rounds["status"] == "done")]
        if match.empty:
            raise CxrAlError(f"no finished training round {round_id}")
        checkpoint = artifact_path(project, match.iloc[0]["checkpoint"])
    if not checkpoint:
        raise CxrAlError("that round kept no model checkpoint (a probe without a pretrained backbone)")
    model, meta, lock = ROUND_MODELS.get(checkpoint)
    paths = [project.db.image(int(i))["path"] for i in image_ids]
    targets = None if class_name is None else [project.class_index(class_name)] * len(paths)
    with lock:  # Grad-CAM hooks the model's layers: one explanation at a time per model
        result = explain_batch(model, paths, targets,
                               image_size=int(meta.get("image_size", project.config["image_size"])))
    out = []
    for i, path in enumerate(paths):
        grey = read_grey(path)
        out.append({"image_id": int(image_ids[i]), "heatmap": result.heatmaps[i],
                    "class": project.classes[int(result.class_indices[i])],
                    "probs": {c: float(p) for c, p in zip(project.classes, result.probs[i], strict=True)},
                    "overlay_png": overlay_png(grey, result.heatmaps[i])})
    return out


def embeddings_stamp(project: Project) -> float | None:
    """When the embeddings (and so the FAISS index built from them) last changed; None before `cxr-al embed`."""
    from active.engine.artifacts import EMBEDDINGS_NAME

    path = project.artifacts / EMBEDDINGS_NAME
    return path.stat().st_mtime if path.exists() else None


def neighbors(project: Project, image_id: int, k: int = 6, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """The k most similar images in the embedding index, with their current (consensus) labels if any.

    `labels` (image_id, label), when the caller holds a recent copy, saves recomputing the consensus."""
    from active.engine.artifacts import load_index

    index = load_index(project)
    ids, scores = index.neighbors(int(image_id), k)
    labels = (export_frame(project) if labels is None else labels)[["image_id", "label"]]
    frame = pd.DataFrame({"image_id": ids.astype(int), "similarity": scores.astype(float)})
    return frame.merge(labels, on="image_id", how="left")

