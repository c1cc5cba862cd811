"""Datasets and batches over encoded texts.

Rows are stored fixed-width (:class:`~textdistill.data.tokenization.Encoded`); a batch is padded
only to its own longest row, which for short titles is far below ``max_len``. Batches are
dicts with ``input_ids`` (B, T), ``attention_mask`` (B, T), ``labels`` (B,), ``index`` (B,)
and, when a teacher cache is attached, ``teacher_logits`` (B, C) and ``teacher_hidden``
(B, H), all float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from textdistill.data.tokenization import Encoded

Batch = dict[str, torch.Tensor]
Row = Mapping[str, torch.Tensor]


class TextDataset(Dataset[dict[str, torch.Tensor]]):
    """Encoded texts with labels (-1: no gold label) and optional teacher targets.

    ``teacher_logits`` (N, C) and ``teacher_hidden`` (N, H) may be memory-mapped and of any
    float dtype (the cache stores hidden vectors as float16); each row is read and turned
    into float32 on access, so a large cache never has to fit in memory.
    """

    def __init__(
        self,
        encoded: Encoded,
        labels: np.ndarray | Sequence[int],
        teacher_logits: np.ndarray | None = None,
        teacher_hidden: np.ndarray | None = None,
    ) -> None:
        n = len(encoded)
        self.encoded = encoded
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {self.labels.shape}")
        self.teacher_logits = _check_rows("teacher_logits", teacher_logits, n)
        self.teacher_hidden = _check_rows("teacher_hidden", teacher_hidden, n)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        i = int(i) % len(self)
        row = {
            "input_ids": torch.from_numpy(self.encoded.row(i).astype(np.int64)),
            "labels": torch.tensor(self.labels[i], dtype=torch.long),
            "index": torch.tensor(i, dtype=torch.long),
        }
        if self.teacher_logits is not None:
            row["teacher_logits"] = _float_row(self.teacher_logits, i)
        if self.teacher_hidden is not None:
            row["teacher_hidden"] = _float_row(self.teacher_hidden, i)
        return row


def _check_rows(name: str, arr: np.ndarray | None, n: int) -> np.ndarray | None:
    if arr is not None and (arr.ndim != 2 or arr.shape[0] != n):
        raise ValueError(f"{name} must have shape ({n}, D), got {arr.shape}")
    return arr


def _float_row(arr: np.ndarray, i: int) -> torch.Tensor:
    # np.array copies: a memmap slice must not outlive the map, and torch needs writable memory.
    return torch.from_numpy(np.array(arr[i], dtype=np.float32))


def collate(rows: Sequence[Row], pad_id: int = 0) -> Batch:
    """Pad ``input_ids`` to the longest row in the batch (right padding); stack the rest."""
    if not rows:
        raise ValueError("cannot collate an empty batch")
    seqs = [r["input_ids"] for r in rows]
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    input_ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)
    width = input_ids.shape[1]
    attention_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()  # (B, T)
    batch: Batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    for key in rows[0]:
        if key != "input_ids":
            batch[key] = torch.stack([r[key] for r in rows])
    return batch


def make_collate(pad_id: int) -> Callable[[Sequence[Row]], Batch]:
    """A picklable collate function (for ``DataLoader(num_workers>0)``) with ``pad_id`` bound."""
    return functools.partial(collate, pad_id=pad_id)


def encoded_batch(encoded: Encoded, indices: Sequence[int] | np.ndarray) -> Batch:
    """``input_ids`` and ``attention_mask`` for rows ``indices``, padded to their longest.

    The fast path for inference: slices the fixed-width arrays instead of building rows.
    """
    idx = np.asarray(indices, dtype=np.int64)
    lengths = torch.from_numpy(encoded.lengths[idx].astype(np.int64))
    width = int(lengths.max()) if len(idx) else 0
    input_ids = torch.from_numpy(encoded.ids[idx, :width].astype(np.int64))  # (B, T)
    attention_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()  # (B, T)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def length_sorted_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length, longest first.

    Cuts padding in inference; the first batch is the longest, so running out of memory
    shows up immediately. Ties keep their original order. Put results back in row order
    with :func:`restore_order`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[s : s + batch_size].tolist() for s in range(0, len(order), batch_size)]


def restore_order(batches: Sequence[Sequence[int]], values: np.ndarray) -> np.ndarray:
    """Undo batching: ``values`` are per-row results concatenated in batch order."""
    order = np.fromiter((i for b in batches for i in b), dtype=np.int64)
    if len(order) != len(values):
        raise ValueError(f"{len(values)} values for {len(order)} batched rows")
    out = np.empty_like(values)
    out[order] = values
    return out


def subset(ds: Dataset[Any], indices: Sequence[int] | np.ndarray) -> Subset[Any]:
    """A view of ``ds`` at ``indices``; rows keep their original ``index`` field."""
    return Subset(ds, [int(i) for i in indices])
