"""TextDataset, collate, length-sorted batches."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from textdistill.data.batching import (
    TextDataset,
    collate,
    encoded_batch,
    length_sorted_batches,
    make_collate,
    restore_order,
    subset,
)
from textdistill.data.tokenization import Encoded

# Three rows of a max_len-6 encoding: lengths 3, 5 and 2 ([CLS] ... [SEP]).
IDS = np.array(
    [
        [2, 10, 3, 0, 0, 0],
        [2, 11, 12, 13, 3, 0],
        [2, 3, 0, 0, 0, 0],
    ],
    np.int32,
)
LENGTHS = np.array([3, 5, 2], np.int32)


@pytest.fixture
def enc():
    return Encoded(IDS.copy(), LENGTHS.copy())


def test_getitem_returns_unpadded_row(enc):
    ds = TextDataset(enc, [1, -1, 0])
    row = ds[1]
    assert set(row) == {"input_ids", "labels", "index"}
    assert row["input_ids"].dtype == torch.long
    assert row["input_ids"].tolist() == [2, 11, 12, 13, 3]
    assert row["labels"].item() == -1 and row["labels"].dtype == torch.long
    assert row["index"].item() == 1
    assert ds[-1]["index"].item() == 2
    with pytest.raises(IndexError):
        ds[3]


def test_teacher_arrays_from_float16_memmap(enc, tmp_path):
    hidden = np.lib.format.open_memmap(tmp_path / "h.npy", "w+", np.float16, (3, 4))
    hidden[:] = np.arange(12, dtype=np.float16).reshape(3, 4) / 4
    hidden.flush()
    mm = np.load(tmp_path / "h.npy", mmap_mode="r")
    logits = np.array([[0.5, -1.0], [2.0, 0.0], [0.0, 0.25]], np.float32)
    ds = TextDataset(enc, np.array([0, 1, 1]), teacher_logits=logits, teacher_hidden=mm)
    row = ds[2]
    assert row["teacher_hidden"].dtype == torch.float32
    assert row["teacher_hidden"].tolist() == [2.0, 2.25, 2.5, 2.75]
    assert row["teacher_logits"].tolist() == [0.0, 0.25]


def test_shape_mismatches_are_rejected(enc):
    with pytest.raises(ValueError, match="labels"):
        TextDataset(enc, [0, 1])
    with pytest.raises(ValueError, match="teacher_logits"):
        TextDataset(enc, [0, 1, 2], teacher_logits=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="teacher_hidden"):
        TextDataset(enc, [0, 1, 2], teacher_hidden=np.zeros(3, np.float32))


def test_collate_pads_to_batch_max_with_mask():
    rows = [
        {"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor(0)},
        {"input_ids": torch.tensor([4]), "labels": torch.tensor(-1)},
        {"input_ids": torch.tensor([5, 6]), "labels": torch.tensor(2)},
    ]
    batch = collate(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0], [5, 6, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch["attention_mask"].dtype == torch.long
    assert batch["labels"].tolist() == [0, -1, 2]
    assert collate(rows, pad_id=9)["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9], [5, 6, 9]]
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_dataloader_batches_carry_everything(enc):
    logits = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    hidden = np.ones((3, 4), np.float16)
    ds = TextDataset(enc, [1, -1, 0], teacher_logits=logits, teacher_hidden=hidden)
    loader = DataLoader(ds, batch_size=2, shuffle=False, collate_fn=make_collate(0))
    first, second = list(loader)
    # Width is the batch's longest row (5), not max_len (6).
    assert first["input_ids"].tolist() == [[2, 10, 3, 0, 0], [2, 11, 12, 13, 3]]
    assert first["attention_mask"].sum(1).tolist() == [3, 5]
    assert first["labels"].tolist() == [1, -1]
    assert first["index"].tolist() == [0, 1]
    assert first["teacher_logits"].shape == (2, 2)
    assert first["teacher_hidden"].dtype == torch.float32
    assert second["input_ids"].tolist() == [[2, 3]]
    assert second["teacher_logits"].tolist() == [[1.0, 1.0]]


def test_make_collate_is_picklable_for_worker_processes():
    fn = pickle.loads(pickle.dumps(make_collate(7)))
    out = fn([{"input_ids": torch.tensor([1, 2])}, {"input_ids": torch.tensor([3])}])
    assert out["input_ids"].tolist() == [[1, 2], [3, 7]]


def test_encoded_batch_matches_collate(enc):
    ds = TextDataset(enc, [0, 0, 0])
    fast = encoded_batch(enc, [2, 0])
    slow = collate([ds[2], ds[0]])
    assert fast["input_ids"].tolist() == slow["input_ids"].tolist() == [[2, 3, 0], [2, 10, 3]]
    assert fast["attention_mask"].tolist() == slow["attention_mask"].tolist()
    assert fast["input_ids"].dtype == torch.long


def test_length_sorted_batches_hand_example():
    assert length_sorted_batches([3, 5, 1, 5, 2], 2) == [[1, 3], [0, 4], [2]]
    assert length_sorted_batches([], 4) == []
    with pytest.raises(ValueError):
        length_sorted_batches([1, 2], 0)


def test_length_sorted_batches_cover_every_index_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 33, size=103)
    batches = length_sorted_batches(lengths, 10)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(103))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert all(lengths[a] >= lengths[b] for a, b in itertools.pairwise(flat))


def test_restore_order_inverts_batching():
    lengths = np.array([3, 5, 1, 5, 2])
    batches = length_sorted_batches(lengths, 2)
    results = np.concatenate([lengths[b] * 10 for b in batches])  # per-row output, batch order
    np.testing.assert_array_equal(restore_order(batches, results), lengths * 10)
    with pytest.raises(ValueError):
        restore_order(batches, results[:-1])


def test_subset_keeps_original_index(enc):
    sub = subset(TextDataset(enc, [0, 1, 2]), np.array([2, 0]))
    assert len(sub) == 2
    assert [sub[0]["index"].item(), sub[1]["index"].item()] == [2, 0]
