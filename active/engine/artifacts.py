"""Where a project's artifacts live (embeddings, FAISS index, round folders) and reading them back."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from store.errors import CxrAlError
from store.project import Project

BACKGROUND_LOG = "background.log"  # in artifacts/rounds: what background rounds print


EMBEDDINGS_NAME = "embeddings.parquet"


INDEX_DIR = "index"

# what a training round writes beside its predictions for the query strategies (rows: image_ids.npy's order)
SAMPLE_FILES = {"image_ids": "image_ids.npy", "mc_probs": "mc_probs.npy", "features": "features.npy"}


def recorded_path(project: Project, path: str | Path | None) -> str | None:
    """A path as the database records it: relative to the project root when it lies inside the project."""
    if not path:
        return None
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(project.root.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def artifact_path(project: Project, recorded: str | None) -> str | None:
    """A path the database recorded, resolved against the project root (absolute ones as they are)."""
    if not recorded:
        return recorded
    path = Path(recorded)
    return str(path if path.is_absolute() else project.root.resolve() / path)


def embeddings_for(project: Project, image_ids: np.ndarray) -> np.ndarray:
    """Embeddings in the order of image_ids; CxrAlError when some image has none yet."""
    from store.embeddings import load_embeddings

    path = project.artifacts / EMBEDDINGS_NAME
    if not path.exists():
        raise CxrAlError("no embeddings yet: run `cxr-al embed` first")
    ids, vectors, _ = load_embeddings(path)
    pos = pd.Series(np.arange(len(ids)), index=ids)
    missing = np.setdiff1d(image_ids, ids)
    if len(missing):
        raise CxrAlError(f"{len(missing)} images have no embedding yet (e.g. id {missing[0]}): run `cxr-al embed`")
    return vectors[pos.loc[image_ids].to_numpy()]


def load_index(project: Project):
    """The project's FAISS index, rebuilt from the embeddings when stale or missing; kept in memory until the
    embeddings file changes (the label page asks for neighbours of every image it shows)."""
    path = project.artifacts / EMBEDDINGS_NAME
    if not path.exists():
        raise CxrAlError("no embeddings yet: run `cxr-al embed` first")
    stat = path.stat()
    return _index_for(str(path), str(project.artifacts / INDEX_DIR), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _index_for(embeddings_path: str, index_dir: str, mtime_ns: int, size: int):
    from store.embeddings import load_embeddings
    from store.index import EmbeddingIndex

    ids, vectors, tag = load_embeddings(embeddings_path)
    return EmbeddingIndex.load_or_build(index_dir, ids, vectors, tag)



def round_samples(project: Project, round_id: int, image_ids: np.ndarray
                  ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """What BALD and BADGE need from a training round, rows in the order of image_ids: (T, N, C) samples of the
    class probabilities (a probe round's bootstrap ensemble, a fine-tuning round's MC dropout) and (N, F)
    penultimate features (fine-tuning rounds; probe rounds leave None, their features are the embeddings).

    None for what the round did not write, whose file is gone, or that misses some of the images (ingested
    after the round): the next round covers them."""
    rounds = project.db.rounds("train")
    row = rounds[rounds["id"] == int(round_id)]
    if row.empty:
        raise CxrAlError(f"no training round {round_id}")
    samples = row.iloc[0]["metrics"].get("samples") or {}
    ids_path = artifact_path(project, samples.get("image_ids"))
    if not ids_path or not Path(ids_path).is_file():
        return None, None
    ids = np.load(ids_path)
    wanted = np.asarray(image_ids, dtype=np.int64)
    if not np.isin(wanted, ids).all():
        return None, None
    rows = pd.Series(np.arange(len(ids)), index=ids).loc[wanted].to_numpy()

    def load(key: str, axis: int) -> np.ndarray | None:
        path = artifact_path(project, samples.get(key))
        if not path or not Path(path).is_file():
            return None
        return np.take(np.load(path, mmap_mode="r"), rows, axis=axis)

    return load("mc_probs", 1), load("features", 0)
