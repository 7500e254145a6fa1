"""TokenStream: int32 ids with document offsets, in memory or memory-mapped from disk."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnkit.data.stream import TokenStream


def test_from_array_keeps_int32_numpy_and_torch_without_copy():
    a = np.arange(10, dtype=np.int32)
    s = TokenStream.from_array(a)
    assert s.ids.dtype == np.int32 and np.shares_memory(s.ids, a)
    t = torch.arange(10, dtype=torch.int32)
    s = TokenStream.from_array(t)
    assert s.ids.dtype == np.int32 and np.shares_memory(s.ids, t.numpy())
    assert len(s) == 10 and s.n_docs == 1 and s.doc_starts.tolist() == [0]


def test_from_array_converts_lists_and_int64_to_int32():
    for ids in ([3, 1, 2], np.array([3, 1, 2]), torch.tensor([3, 1, 2])):
        s = TokenStream.from_array(ids)
        assert s.ids.dtype == np.int32 and s.ids.tolist() == [3, 1, 2]


def test_empty_stream_is_a_value_error():
    with pytest.raises(ValueError, match="no tokens"):
        TokenStream.from_array([])
    with pytest.raises(ValueError, match="no tokens"):
        TokenStream.from_array(np.zeros(0, dtype=np.int32))
    with pytest.raises(ValueError, match="no documents"):
        TokenStream.from_docs([])


def test_ids_that_do_not_fit_int32_or_are_negative_are_value_errors():
    with pytest.raises(ValueError, match=r"token id 2147483648 in ids does not fit in int32"):
        TokenStream.from_array(np.array([0, 2**31], dtype=np.int64))
    with pytest.raises(ValueError, match=r"negative token id -1 in ids"):
        TokenStream.from_array([0, -1])
    with pytest.raises(ValueError, match="negative"):
        TokenStream.from_array(np.array([0, -5], dtype=np.int32))
    with pytest.raises(ValueError, match="negative token id -3 in document 1"):
        TokenStream.from_docs([[1, 2], [-3]])


def test_non_integer_or_2d_ids_are_rejected():
    with pytest.raises(TypeError, match="must be integers, got dtype float32"):
        TokenStream.from_array(torch.zeros(3))
    with pytest.raises(ValueError, match=r"must be 1-d.*\(2, 3\)"):
        TokenStream.from_array(np.zeros((2, 3), dtype=np.int32))


def test_from_docs_records_document_offsets():
    s = TokenStream.from_docs([torch.tensor([1, 2, 3]), np.array([4]), [5, 6]])
    assert s.ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert s.doc_starts.dtype == np.int64 and s.doc_starts.tolist() == [0, 3, 4]
    assert s.n_docs == 3
    assert s.doc(0).tolist() == [1, 2, 3] and s.doc(1).tolist() == [4] and s.doc(-1).tolist() == [5, 6]
    starts, ends = s.doc_bounds()
    assert starts.tolist() == [0, 3, 4] and ends.tolist() == [3, 4, 6]
    with pytest.raises(IndexError, match="document 3 out of range"):
        s.doc(3)


def test_slicing_returns_numpy_views_and_indexing_ints():
    s = TokenStream.from_array(np.arange(10, dtype=np.int32))
    view = s[2:5]
    assert isinstance(view, np.ndarray) and view.tolist() == [2, 3, 4] and np.shares_memory(view, s.ids)
    assert np.shares_memory(s.doc(0), s.ids)
    assert s[3] == 3 and isinstance(s[3], int)


def test_bad_doc_starts_are_rejected():
    with pytest.raises(ValueError, match="begin with 0"):
        TokenStream.from_array([1, 2, 3], doc_starts=[1])
    with pytest.raises(ValueError, match="non-decreasing"):
        TokenStream.from_array([1, 2, 3], doc_starts=[0, 2, 1])
    with pytest.raises(ValueError, match="past the stream's 3 tokens"):
        TokenStream.from_array([1, 2, 3], doc_starts=[0, 4])


def test_write_in_chunks_then_open_memory_maps_the_same_stream(tmp_path):
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 1000, size=n, dtype=np.int32) for n in (100, 1, 57)]
    s = TokenStream.write(tmp_path / "corpus", iter(chunks))
    assert isinstance(s.ids, np.memmap) and s.is_mmap and s.ids.dtype == np.int32
    np.testing.assert_array_equal(s.ids, np.concatenate(chunks))
    assert s.n_docs == 1
    # a plain .npy that numpy reads by itself
    loaded = np.load(tmp_path / "corpus" / "ids.npy")
    np.testing.assert_array_equal(loaded, np.concatenate(chunks))
    reopened = TokenStream.open(tmp_path / "corpus")
    assert isinstance(reopened.ids, np.memmap) and len(reopened) == 158
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # no temporary files left


def test_write_records_documents_from_chunks_and_streams(tmp_path):
    s = TokenStream.write(tmp_path / "d", [np.array([1, 2]), torch.tensor([3]), [4, 5, 6]], docs=True)
    assert s.doc_starts.tolist() == [0, 2, 3] and s.doc(2).tolist() == [4, 5, 6]
    parts = [TokenStream.from_docs([[1], [2, 3]]), TokenStream.from_docs([[4, 5], [6]])]
    s = TokenStream.write(tmp_path / "e", parts)
    assert s.ids.tolist() == [1, 2, 3, 4, 5, 6] and s.doc_starts.tolist() == [0, 1, 3, 5]


def test_write_replaces_an_existing_stream_and_checks_chunks(tmp_path):
    TokenStream.write(tmp_path / "s", [[1, 2, 3]])
    s = TokenStream.write(tmp_path / "s", [[7, 8]])
    assert s.ids.tolist() == [7, 8]
    with pytest.raises(ValueError, match="negative token id -1 in chunk 1"):
        TokenStream.write(tmp_path / "bad", [[1], [-1]])
    with pytest.raises(ValueError, match="no tokens"):
        TokenStream.write(tmp_path / "empty", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_open_a_missing_stream_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"TokenStream.write"):
        TokenStream.open(tmp_path / "nothing")


def test_release_memory_keeps_the_stream_readable(tmp_path):
    s = TokenStream.write(tmp_path / "s", [np.arange(5000, dtype=np.int32)])
    assert int(s.ids.sum()) == sum(range(5000))
    s.release_memory()
    assert int(s.ids[4999]) == 4999
    TokenStream.from_array([1, 2]).release_memory()  # no-op in memory
