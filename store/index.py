"""FAISS index over the image embeddings: exact for small pools, IVF for large ones, saved next to the project.

Vectors are L2-normalised, so the inner product is the cosine similarity. Pools below `exact_max`
images get an exact flat index; larger pools an IVF index with about sqrt(N) lists, which answers
in a fraction of the time at a small loss of recall. When FAISS sees a GPU, searches run there;
a CPU copy is kept for saving and for looking up stored vectors, so every code path also runs
(and is tested) on the CPU. A small JSON file next to the index says which embeddings it was built
from (checkpoint tag and a hash of the sorted image ids), so a stale index is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from store.errors import CxrAlError

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
META_FILE = "index.json"
FORMAT_VERSION = 1
DEFAULT_EXACT_MAX = 100_000


def ids_digest(ids: np.ndarray) -> str:
    """SHA-256 of the sorted image ids: equal exactly when two id sets are equal, whatever their order."""
    ordered = np.sort(np.asarray(ids, dtype=np.int64)).astype("<i8", copy=False)
    return hashlib.sha256(ordered.tobytes()).hexdigest()


def index_kind_for(count: int, exact_max: int = DEFAULT_EXACT_MAX) -> str:
    """'flat' (exact) below exact_max vectors, 'ivf' from there on."""
    return "flat" if count < exact_max else "ivf"


def _unit_float32(vectors: np.ndarray) -> np.ndarray:
    """C-contiguous float32 copy-if-needed of vectors, L2-normalised when they are not already."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise CxrAlError(f"embeddings must be an (N, D) array, got shape {x.shape}")
    if len(x):
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        if not np.allclose(norms, 1.0, atol=1e-3):
            x = x / np.where(norms > 0, norms, 1.0)[:, None].astype(np.float32)  # zero vectors stay zero
    return x


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) on a temporary file next to path, then move it over path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EmbeddingIndex:
    """Nearest-neighbour search over image embeddings by image id (cosine similarity)."""

    def __init__(self, cpu_index: faiss.Index, ids: np.ndarray, checkpoint_tag: str, kind: str,
                 use_gpu: bool | None = None) -> None:
        """Wrap a filled CPU FAISS index whose i-th vector belongs to image ids[i]; prefer `build` or `load`."""
        if cpu_index.ntotal != len(ids):
            raise CxrAlError(f"index holds {cpu_index.ntotal} vectors for {len(ids)} image ids; rebuild it")
        self._cpu = cpu_index
        self._ids = np.asarray(ids, dtype=np.int64)
        self._order = np.argsort(self._ids, kind="stable")
        self._digest = ids_digest(self._ids)
        self.checkpoint_tag = checkpoint_tag
        self._kind = kind
        if kind == "ivf":  # stored vectors are looked up by position (neighbors of an image)
            faiss.extract_index_ivf(cpu_index).make_direct_map()
        self._gpu_resources = None
        self._search_index = cpu_index
        if (use_gpu is None or use_gpu) and faiss.get_num_gpus() > 0:  # pragma: no cover - needs a GPU
            self._gpu_resources = faiss.StandardGpuResources()
            self._search_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, cpu_index)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, checkpoint_tag: str, *,
              exact_max: int = DEFAULT_EXACT_MAX, nlist: int | None = None, nprobe: int | None = None,
              seed: int = 0, use_gpu: bool | None = None) -> EmbeddingIndex:
        """Index vectors (one row per image id): exact below exact_max rows, IVF (nlist ~ sqrt(N)) above."""
        ids = np.asarray(ids, dtype=np.int64)
        x = _unit_float32(vectors)
        if ids.ndim != 1 or len(ids) != len(x):
            raise CxrAlError(f"need one embedding per image id; got {len(x)} embeddings for {len(ids)} ids")
        if len(np.unique(ids)) != len(ids):
            raise CxrAlError("image ids of an index must be unique")
        if not checkpoint_tag:
            raise CxrAlError("an index needs the checkpoint tag of its embeddings")
        dim = x.shape[1]
        kind = index_kind_for(len(x), exact_max)
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        else:
            nlist = int(nlist or max(1, round(math.sqrt(len(x)))))
            nlist = min(nlist, len(x))
            index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.seed = seed
            ivf.cp.min_points_per_centroid = 1  # tiny test pools: no warning, any N >= nlist trains
            ivf.cp.max_points_per_centroid = 128  # subsample for k-means: 1M vectors train on ~128k
            ivf.nprobe = int(nprobe or min(nlist, max(8, nlist // 16)))
            index.train(x)
        index.add(x)
        return cls(index, ids, checkpoint_tag, kind, use_gpu=use_gpu)

    # ------------------------------------------------------------------ properties
    @property
    def kind(self) -> str:
        """'flat' (exact inner product) or 'ivf' (inverted lists, approximate)."""
        return self._kind

    @property
    def ntotal(self) -> int:
        """Number of indexed images."""
        return int(self._cpu.ntotal)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self._cpu.d)

    @property
    def ids(self) -> np.ndarray:
        """Image ids in index order (a copy)."""
        return self._ids.copy()

    @property
    def nprobe(self) -> int | None:
        """Inverted lists visited per IVF query (None for the flat index)."""
        return int(faiss.extract_index_ivf(self._cpu).nprobe) if self._kind == "ivf" else None

    @property
    def on_gpu(self) -> bool:
        """True when searches run on a GPU."""
        return self._gpu_resources is not None

    # ------------------------------------------------------------------ queries
    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (M, k) cosine similarities, image ids (M, k)) of the k nearest images to each query;
        id -1 (score -inf) where fewer than k were found."""
        q = np.asarray(vectors, dtype=np.float32)
        q = _unit_float32(q[None, :] if q.ndim == 1 else q)
        if q.shape[1] != self.dim:
            raise CxrAlError(f"query vectors have {q.shape[1]} dimensions, the index {self.dim}")
        k = int(k)
        if k <= 0 or self.ntotal == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = min(k, self.ntotal)
        scores, pos = self._search_index.search(q, k)
        found = pos >= 0
        ids = np.where(found, self._ids[np.where(found, pos, 0)], -1)
        return np.where(found, scores, -np.inf).astype(np.float32), ids.astype(np.int64)

    def position_of(self, image_id: int) -> int:
        """Row of an image in the index; CxrAlError when the image is not indexed."""
        at = np.searchsorted(self._ids, image_id, sorter=self._order)
        if at >= len(self._ids) or self._ids[self._order[at]] != image_id:
            raise CxrAlError(f"image {image_id} is not in the embedding index: run `cxr-al embed` to add it")
        return int(self._order[at])

    def vector_of(self, image_id: int) -> np.ndarray:
        """The stored (normalised) embedding of an image."""
        return self._cpu.reconstruct(self.position_of(image_id))

    def neighbors(self, image_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (k,), scores (k,)) of the k images most similar to an indexed image, the image itself excluded."""
        scores, ids = self.search(self.vector_of(image_id), int(k) + 1)
        scores, ids = scores[0], ids[0]
        keep = (ids != image_id) & (ids >= 0)
        return ids[keep][:k], scores[keep][:k]

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict[str, Any]:
        """What the index was built from: kind, count, dim, checkpoint tag, hash of the sorted ids."""
        meta: dict[str, Any] = {"format": FORMAT_VERSION, "kind": self._kind, "count": self.ntotal, "dim": self.dim,
                                "checkpoint_tag": self.checkpoint_tag, "ids_sha256": self._digest}
        if self._kind == "ivf":
            meta["nlist"] = int(faiss.extract_index_ivf(self._cpu).nlist)
            meta["nprobe"] = self.nprobe
        return meta

    def is_stale(self, ids: np.ndarray, checkpoint_tag: str) -> bool:
        """True when the index no longer matches the current embeddings (other images or another checkpoint)."""
        return checkpoint_tag != self.checkpoint_tag or ids_digest(ids) != self._digest

    def save(self, directory: Path | str) -> Path:
        """Write index, ids and metadata JSON into directory (each file atomically, the JSON last)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(directory / INDEX_FILE, lambda tmp: faiss.write_index(self._cpu, tmp))

        def write_ids(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, self._ids)

        _write_atomically(directory / IDS_FILE, write_ids)

        def write_meta(tmp: str) -> None:
            Path(tmp).write_text(json.dumps(self.metadata(), indent=2) + "\n")

        _write_atomically(directory / META_FILE, write_meta)
        return directory

    @staticmethod
    def read_metadata(directory: Path | str) -> dict[str, Any] | None:
        """The metadata JSON of a saved index, or None when there is none (or it is unreadable)."""
        try:
            return json.loads((Path(directory) / META_FILE).read_text())
        except (OSError, ValueError):
            return None

    @classmethod
    def load(cls, directory: Path | str, use_gpu: bool | None = None) -> EmbeddingIndex:
        """Read an index written by `save`; CxrAlError when it is missing or its files disagree."""
        directory = Path(directory)
        meta = cls.read_metadata(directory)
        if meta is None or meta.get("format") != FORMAT_VERSION:
            raise CxrAlError(f"no usable embedding index in {directory}: run `cxr-al embed` to build it")
        try:
            index = faiss.read_index(str(directory / INDEX_FILE))
            ids = np.load(directory / IDS_FILE)
        except (OSError, RuntimeError, ValueError) as exc:
            raise CxrAlError(f"the embedding index in {directory} is unreadable ({exc}); run `cxr-al embed` "
                             "to rebuild it") from exc
        if (index.ntotal != meta["count"] or len(ids) != meta["count"] or index.d != meta["dim"]
                or ids_digest(ids) != meta["ids_sha256"]):
            raise CxrAlError(f"the embedding index files in {directory} do not match each other; run "
                             "`cxr-al embed` to rebuild it")
        return cls(index, ids, meta["checkpoint_tag"], meta["kind"], use_gpu=use_gpu)

    @classmethod
    def load_or_build(cls, directory: Path | str, ids: np.ndarray, vectors: np.ndarray, checkpoint_tag: str, *,
                      exact_max: int = DEFAULT_EXACT_MAX, seed: int = 0,
                      use_gpu: bool | None = None) -> EmbeddingIndex:
        """The saved index when it matches these embeddings, else a fresh one, built and saved in its place."""
        meta = cls.read_metadata(directory)
        vectors = np.asarray(vectors)
        fresh = (meta is not None and meta.get("format") == FORMAT_VERSION
                 and meta.get("checkpoint_tag") == checkpoint_tag
                 and meta.get("ids_sha256") == ids_digest(ids)
                 and meta.get("dim") == (vectors.shape[1] if vectors.ndim == 2 else None)
                 and meta.get("kind") == index_kind_for(len(ids), exact_max))
        if fresh:
            try:
                return cls.load(directory, use_gpu=use_gpu)
            except CxrAlError:
                pass  # damaged files: rebuild below
        index = cls.build(ids, vectors, checkpoint_tag, exact_max=exact_max, seed=seed, use_gpu=use_gpu)
        index.save(directory)
        return index
