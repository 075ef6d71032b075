"""Embedding Parquet files and the FAISS index: round trips, incremental merges, staleness, search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from store.embeddings import load_embeddings, merge_embeddings, read_checkpoint_tag, save_embeddings
from store.errors import CxrAlError
from store.index import EmbeddingIndex, ids_digest


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- embeddings
def test_embeddings_round_trip_keeps_ids_vectors_and_tag(tmp_path: Path) -> None:
    ids = np.array([7, 3, 11, 42], dtype=np.int64)
    vectors = unit_vectors(4, 5, seed=0)
    path = save_embeddings(tmp_path / "emb.parquet", ids, vectors, "sha256:abc")
    got_ids, got_vectors, tag = load_embeddings(path)
    assert tag == "sha256:abc" == read_checkpoint_tag(path)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_vectors, vectors)
    assert got_vectors.dtype == np.float32 and got_vectors.flags.c_contiguous
    assert pq.read_schema(path).metadata[b"cxr_al.checkpoint_tag"] == b"sha256:abc"
    assert [p.name for p in tmp_path.iterdir()] == ["emb.parquet"]  # no temporary file left behind


def test_save_replaces_the_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "emb.parquet"
    save_embeddings(path, np.arange(3), unit_vectors(3, 4, 0), "a")
    save_embeddings(path, np.arange(2), unit_vectors(2, 4, 1), "b")
    ids, vectors, tag = load_embeddings(path)
    assert tag == "b" and len(ids) == 2 and vectors.shape == (2, 4)


def test_merge_adds_new_ids_and_updates_existing_ones(tmp_path: Path) -> None:
    path = tmp_path / "emb.parquet"
    first = unit_vectors(3, 4, seed=1)
    save_embeddings(path, np.array([1, 2, 3]), first, "ckpt")
    later = unit_vectors(3, 4, seed=2)
    ids, vectors = merge_embeddings(path, np.array([3, 4, 5]), later, "ckpt")
    got_ids, got_vectors, _ = load_embeddings(path)
    np.testing.assert_array_equal(got_ids, ids)
    by_id = dict(zip(got_ids.tolist(), got_vectors, strict=True))
    assert sorted(by_id) == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(by_id[1], first[0])
    np.testing.assert_array_equal(by_id[3], later[0])  # re-embedded image: the newer vector wins
    np.testing.assert_array_equal(by_id[5], later[2])


def test_merge_creates_a_missing_file(tmp_path: Path) -> None:
    ids, _ = merge_embeddings(tmp_path / "new.parquet", np.array([9]), unit_vectors(1, 3, 0), "ckpt")
    assert load_embeddings(tmp_path / "new.parquet")[0].tolist() == ids.tolist() == [9]


def test_merge_refuses_another_checkpoint_or_dimension(tmp_path: Path) -> None:
    path = tmp_path / "emb.parquet"
    save_embeddings(path, np.array([1, 2]), unit_vectors(2, 4, 0), "ckpt-a")
    with pytest.raises(CxrAlError, match="ckpt-a"):
        merge_embeddings(path, np.array([3]), unit_vectors(1, 4, 1), "ckpt-b")
    with pytest.raises(CxrAlError, match="dimensions"):
        merge_embeddings(path, np.array([3]), unit_vectors(1, 8, 1), "ckpt-a")
    assert load_embeddings(path)[0].tolist() == [1, 2]  # untouched


@pytest.mark.parametrize("ids, vectors, tag, match", [
    (np.array([1, 1]), np.zeros((2, 3)), "t", "unique"),
    (np.array([1, 2]), np.zeros((3, 3)), "t", "one row per image id"),
    (np.array([1, 2]), np.zeros((2, 3)), "", "checkpoint tag"),
])
def test_save_rejects_inconsistent_input(tmp_path: Path, ids, vectors, tag, match) -> None:
    with pytest.raises(CxrAlError, match=match):
        save_embeddings(tmp_path / "e.parquet", ids, vectors, tag)


def test_loading_a_missing_or_foreign_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CxrAlError, match="cxr-al embed"):
        load_embeddings(tmp_path / "missing.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"image_id": [1]}), tmp_path / "foreign.parquet")
    with pytest.raises(CxrAlError, match="no checkpoint tag"):
        load_embeddings(tmp_path / "foreign.parquet")


# ----------------------------------------------------------------------------- index
def test_flat_index_search_is_exact(tmp_path: Path) -> None:
    vectors = unit_vectors(300, 16, seed=3)
    ids = np.arange(1000, 1300, dtype=np.int64)
    index = EmbeddingIndex.build(ids, vectors, "ckpt")
    assert index.kind == "flat" and index.ntotal == 300 and index.dim == 16
    queries = unit_vectors(5, 16, seed=4)
    scores, found = index.search(queries, 4)
    brute = queries @ vectors.T
    expected = np.argsort(-brute, axis=1)[:, :4]
    np.testing.assert_array_equal(found, ids[expected])
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, axis=1), rtol=1e-5, atol=1e-5)


def test_index_normalises_vectors_so_scores_are_cosines() -> None:
    vectors = unit_vectors(10, 4, seed=0) * 7.0
    index = EmbeddingIndex.build(np.arange(10), vectors, "ckpt")
    scores, ids = index.search(vectors[:1] * 3.0, 1)
    assert ids[0, 0] == 0 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_ivf_is_used_from_the_size_threshold_on() -> None:
    vectors = unit_vectors(2000, 8, seed=5)
    small = EmbeddingIndex.build(np.arange(499), vectors[:499], "ckpt", exact_max=500)
    big = EmbeddingIndex.build(np.arange(2000), vectors, "ckpt", exact_max=500)
    assert small.kind == "flat"
    assert big.kind == "ivf" and big.metadata()["nlist"] == round(np.sqrt(2000)) and big.nprobe >= 8
    _, found = big.search(vectors[:20], 1)
    assert (found[:, 0] == np.arange(20)).mean() >= 0.9  # each vector finds itself (approximate index)


def test_neighbors_excludes_the_image_itself() -> None:
    vectors = unit_vectors(50, 6, seed=6)
    ids = np.arange(50) * 10
    for index in (EmbeddingIndex.build(ids, vectors, "c"), EmbeddingIndex.build(ids, vectors, "c", exact_max=10)):
        got, scores = index.neighbors(120, 5)
        assert len(got) == 5 and 120 not in got
        assert np.all(np.diff(scores) <= 1e-6)
        if index.kind == "flat":
            expected = ids[np.argsort(-(vectors @ vectors[12]))[1:6]]
            np.testing.assert_array_equal(got, expected)
    with pytest.raises(CxrAlError, match="not in the embedding index"):
        index.neighbors(7, 3)


def test_save_load_round_trip_and_metadata(tmp_path: Path) -> None:
    vectors = unit_vectors(600, 8, seed=7)
    ids = np.random.default_rng(0).permutation(600).astype(np.int64) + 5
    for exact_max in (100_000, 100):
        built = EmbeddingIndex.build(ids, vectors, "ckpt-1", exact_max=exact_max)
        out = tmp_path / built.kind
        built.save(out)
        meta = json.loads((out / "index.json").read_text())
        assert meta["kind"] == built.kind and meta["count"] == 600 and meta["dim"] == 8
        assert meta["checkpoint_tag"] == "ckpt-1" and meta["ids_sha256"] == ids_digest(ids)
        loaded = EmbeddingIndex.load(out)
        assert loaded.kind == built.kind and loaded.ntotal == 600 and loaded.checkpoint_tag == "ckpt-1"
        np.testing.assert_array_equal(loaded.search(vectors[:3], 5)[1], built.search(vectors[:3], 5)[1])
        np.testing.assert_array_equal(loaded.neighbors(int(ids[0]), 3)[0], built.neighbors(int(ids[0]), 3)[0])


def test_staleness_follows_ids_and_checkpoint() -> None:
    ids = np.array([3, 1, 2])
    index = EmbeddingIndex.build(ids, unit_vectors(3, 4, 0), "ckpt")
    assert not index.is_stale(np.array([1, 2, 3]), "ckpt")  # order does not matter
    assert index.is_stale(np.array([1, 2, 3, 4]), "ckpt")
    assert index.is_stale(np.array([1, 2]), "ckpt")
    assert index.is_stale(np.array([1, 2, 3]), "other-ckpt")


def test_load_or_build_reuses_a_fresh_index_and_rebuilds_a_stale_one(tmp_path: Path) -> None:
    vectors = unit_vectors(40, 4, seed=8)
    ids = np.arange(40)
    first = EmbeddingIndex.load_or_build(tmp_path / "idx", ids, vectors, "ckpt")
    stamp = (tmp_path / "idx" / "index.faiss").stat().st_mtime_ns
    again = EmbeddingIndex.load_or_build(tmp_path / "idx", ids[::-1], vectors[::-1], "ckpt")
    assert (tmp_path / "idx" / "index.faiss").stat().st_mtime_ns == stamp  # loaded, not rebuilt
    np.testing.assert_array_equal(again.ids, first.ids)

    more = np.concatenate([vectors, unit_vectors(2, 4, seed=9)])
    grown = EmbeddingIndex.load_or_build(tmp_path / "idx", np.arange(42), more, "ckpt")
    assert grown.ntotal == 42 and not grown.is_stale(np.arange(42), "ckpt")
    assert EmbeddingIndex.load(tmp_path / "idx").ntotal == 42  # the rebuilt index was saved

    retagged = EmbeddingIndex.load_or_build(tmp_path / "idx", np.arange(42), more, "new-ckpt")
    assert retagged.checkpoint_tag == "new-ckpt" == EmbeddingIndex.load(tmp_path / "idx").checkpoint_tag


def test_load_or_build_recovers_from_damaged_files(tmp_path: Path) -> None:
    vectors = unit_vectors(20, 4, seed=10)
    EmbeddingIndex.load_or_build(tmp_path / "idx", np.arange(20), vectors, "ckpt")
    (tmp_path / "idx" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(CxrAlError, match="unreadable"):
        EmbeddingIndex.load(tmp_path / "idx")
    rebuilt = EmbeddingIndex.load_or_build(tmp_path / "idx", np.arange(20), vectors, "ckpt")
    assert rebuilt.ntotal == 20 and EmbeddingIndex.load(tmp_path / "idx").ntotal == 20


def test_load_of_a_missing_index_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CxrAlError, match="cxr-al embed"):
        EmbeddingIndex.load(tmp_path / "nothing")
