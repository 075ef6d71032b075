"""Where a project's artifacts live (embeddings, FAISS index, round folders) and reading them back."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from store.errors import CxrAlError
from store.project import Project

BACKGROUND_LOG = "background.log"  # in artifacts/rounds: what background rounds print


EMBEDDINGS_NAME = "embeddings.parquet"


INDEX_DIR = "index"


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

