"""Image embeddings on disk: one Parquet file keyed by image id, tagged with the checkpoint that made them.

The checkpoint tag lives in the Parquet key-value metadata, so a reader always knows which backbone
produced the vectors, and vectors of two different backbones are never mixed in one file. Writes
go to a temporary file in the same folder and are moved into place with `os.replace`, so a reader
sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from store.errors import CxrAlError

TAG_KEY = b"cxr_al.checkpoint_tag"
ID_COLUMN = "image_id"
VECTOR_COLUMN = "embedding"


def _validated(ids: np.ndarray, vectors: np.ndarray, checkpoint_tag: str) -> tuple[np.ndarray, np.ndarray]:
    """ids as int64 (N,), vectors as C-contiguous float32 (N, D); CxrAlError when they do not fit together."""
    ids = np.asarray(ids)
    vectors = np.asarray(vectors)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or len(ids) == 0):
        raise CxrAlError(f"image ids must be a 1-D integer array, got shape {ids.shape} of {ids.dtype}")
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise CxrAlError(f"embeddings must be an (N, D) array with one row per image id; got {vectors.shape} "
                         f"for {len(ids)} ids")
    if vectors.shape[1] == 0:
        raise CxrAlError("embeddings must have at least one dimension")
    if not isinstance(checkpoint_tag, str) or not checkpoint_tag:
        raise CxrAlError("embeddings need a non-empty checkpoint tag saying which backbone produced them")
    ids = ids.astype(np.int64, copy=False)
    if len(np.unique(ids)) != len(ids):
        raise CxrAlError("image ids of an embedding file must be unique")
    return ids, np.ascontiguousarray(vectors, dtype=np.float32)


def save_embeddings(path: Path | str, ids: np.ndarray, vectors: np.ndarray, checkpoint_tag: str) -> Path:
    """Write embeddings (one row per image id) atomically, replacing the file; returns the path."""
    ids, vectors = _validated(ids, vectors, checkpoint_tag)
    path = Path(path)
    dim = vectors.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), dim)
    schema = pa.schema([(ID_COLUMN, pa.int64()), (VECTOR_COLUMN, column.type)],
                       metadata={TAG_KEY: checkpoint_tag.encode()})
    table = pa.Table.from_arrays([pa.array(ids, type=pa.int64()), column], schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint_tag(path: Path | str) -> str:
    """The checkpoint tag of an embedding file, read from its footer without loading the vectors."""
    path = Path(path)
    if not path.exists():
        raise CxrAlError(f"no embeddings at {path}: run `cxr-al embed` first")
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as exc:
        raise CxrAlError(f"{path} is not a readable Parquet file ({exc}); delete it and run `cxr-al embed`") from exc
    if TAG_KEY not in metadata:
        raise CxrAlError(f"{path} has no checkpoint tag, so it was not written by CXR-AL; delete it and run "
                         "`cxr-al embed`")
    return metadata[TAG_KEY].decode()


def load_embeddings(path: Path | str) -> tuple[np.ndarray, np.ndarray, str]:
    """(ids int64 (N,), vectors float32 (N, D), checkpoint tag) of an embedding file."""
    path = Path(path)
    tag = read_checkpoint_tag(path)
    table = pq.read_table(path)
    column = table.column(VECTOR_COLUMN).combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        raise CxrAlError(f"{path}: column {VECTOR_COLUMN!r} is not a fixed-size vector; delete it and run "
                         "`cxr-al embed`")
    dim = column.type.list_size
    ids = table.column(ID_COLUMN).to_numpy().astype(np.int64, copy=False)
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    return ids, np.ascontiguousarray(vectors), tag


def merge_embeddings(path: Path | str, ids: np.ndarray, vectors: np.ndarray,
                     checkpoint_tag: str) -> tuple[np.ndarray, np.ndarray]:
    """Add newly embedded images to an embedding file (created when missing) and return all (ids, vectors).

    Refuses vectors of another checkpoint than the file's, because distances between embeddings of
    two backbones mean nothing. An id already in the file gets the new vector (same checkpoint, so
    the same image embeds to the same vector up to numerical noise).
    """
    new_ids, new_vectors = _validated(ids, vectors, checkpoint_tag)
    path = Path(path)
    if not path.exists():
        save_embeddings(path, new_ids, new_vectors, checkpoint_tag)
        return new_ids, new_vectors
    old_ids, old_vectors, old_tag = load_embeddings(path)
    if old_tag != checkpoint_tag:
        raise CxrAlError(f"{path} holds embeddings of checkpoint {old_tag!r}, not {checkpoint_tag!r}: embeddings of "
                         "different backbones cannot be mixed; re-embed every image with the new checkpoint")
    if len(new_ids) == 0:
        return old_ids, old_vectors
    if old_vectors.shape[1] != new_vectors.shape[1]:
        raise CxrAlError(f"{path} holds {old_vectors.shape[1]}-dimensional embeddings, the new ones have "
                         f"{new_vectors.shape[1]} dimensions; re-embed every image")
    keep = ~np.isin(old_ids, new_ids)
    all_ids = np.concatenate([old_ids[keep], new_ids])
    all_vectors = np.concatenate([old_vectors[keep], new_vectors])
    save_embeddings(path, all_ids, all_vectors, checkpoint_tag)
    return all_ids, all_vectors
