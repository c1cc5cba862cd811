"""The teacher soft-target cache: run the teacher(s) once, reuse the logits every epoch.

Layout of a cache folder::

    logits.npy      (N, C) float32   teacher logits (ensemble: averaged log-probabilities)
    pooled.npy      (N, H) float16   pooled sentence vectors (optional)
    manifest.json   teacher fingerprints, tokenizer hashes, max length, data hash, rows,
                    and the sha256, shape and dtype of every array file

The arrays are written as memory-mapped ``.npy`` files batch by batch, so a transfer set
larger than RAM works, and read back memory-mapped. The folder is named by a key of
everything the values depend on (:func:`cache_key`), so other texts or teachers get another
folder. A reader checks the folder before using it: the manifest must be a JSON object with
the expected fields that matches the key, and every array file must match its recorded
sha256, load without pickle, have the recorded shape and dtype and hold only finite values.
Anything else (a truncated, zeroed, reordered or deleted array, an edited or garbage
manifest) is logged as a warning and the cache is rebuilt in place: a damaged cache is never
used, and never a traceback. Verifying costs a read of the arrays: about 0.2 s for 45,000
rows with 768-wide pooled vectors (70 MB), milliseconds for the logits alone.

Several processes (``accelerate launch``/``torchrun``) build one cache together: the
transfer set is cut into length-sorted batches, each process runs the teacher on every
N-th batch and streams its rows into its own memory-mapped part files in a temporary folder
that the main process created; the main process then scatters the parts into the final
arrays, writes the manifest and renames the folder into place. Each file has exactly one
writer, which keeps this correct on a filesystem shared between machines, where two
processes writing disjoint rows of one memory-mapped file could overwrite each other's
pages. The batches are the same as in a single process, so the cache is too.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textdistill.core import distributed
from textdistill.core.errors import UserError
from textdistill.core.io import atomic_dir, file_sha256, read_json, texts_sha256, write_json
from textdistill.core.paths import textdistill_home
from textdistill.core.progress import progress as progress_bar
from textdistill.data.batching import encoded_batch, length_sorted_batches
from textdistill.data.tokenization import Encoded, encode_cached, tokenizer_fingerprint
from textdistill.distill.predictions import Predictions, is_predictions_folder, load_predictions
from textdistill.models.ensemble import combine_ensemble
from textdistill.models.folders import LoadedModel, load_model, sentence_width

log = logging.getLogger(__name__)

CACHE_VERSION = 3
"""2: texts hashed length-prefixed (core.io.texts_sha256); 3: the manifest records the sha256
of every array file (entries without checksums get another key, so they are never trusted)."""
_ARRAY_FILES = {"logits.npy": np.dtype(np.float32), "pooled.npy": np.dtype(np.float16)}
"""Every array a cache folder may hold, with its dtype; the manifest's ``arrays`` lists those
written, each with its sha256 and shape."""
_MANIFEST_FIELDS = ("version", "teachers", "ensemble", "texts_sha256", "rows", "arrays")
_FINITE_ROWS = 1 << 14
"""Rows checked for NaN/inf per step: bounds the memory of the check on large pooled arrays."""
_SCATTER_ROWS = 1 << 16
"""Rows copied per step when assembling the parts: bounds the memory of the assembly."""


@dataclass
class SoftTargets:
    """Cached teacher outputs for every row of a transfer set, in transfer-set order."""

    logits: np.ndarray  # (N, C) float32
    pooled: np.ndarray | None  # (N, H) float16
    manifest: dict[str, Any]
    path: Path

    def __len__(self) -> int:
        return int(self.logits.shape[0])


Teacher = LoadedModel | Predictions
"""A model folder to run, or a predictions file to look texts up in."""


def load_teacher(path: str | Path) -> Teacher:
    """The teacher in ``path``: its predictions table, or its model on this process's device."""
    if is_predictions_folder(path):
        return load_predictions(path)
    return load_model(path, device=distributed.device())


def _describe(t: Teacher) -> dict[str, Any]:
    if isinstance(t, Predictions):
        return {"path": str(t.path), "fingerprint": t.fingerprint, "predictions": True}
    return {
        "path": str(t.path),
        "fingerprint": t.fingerprint,
        "tokenizer": tokenizer_fingerprint(t.tokenizer),
        "max_len": t.max_len,
    }


def expected_manifest(
    teachers: Sequence[Teacher],
    texts: Sequence[str],
    *,
    weights: Sequence[float] | None,
    ensemble: str,
    with_pooled: bool,
    data_files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything the cached values depend on; two equal manifests mean equal caches."""
    return {
        "version": CACHE_VERSION,
        "teachers": [_describe(t) for t in teachers],
        "weights": list(weights) if weights is not None else None,
        "ensemble": ensemble if len(teachers) > 1 else "single",
        "classes": list(teachers[0].label_names) if teachers else [],
        "pooled": with_pooled,
        "texts_sha256": texts_sha256(texts),
        "data_files": data_files or {},
        "rows": len(texts),
    }


def _comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    # The teacher's location may move; its fingerprint is what matters.
    out = dict(manifest)
    out["teachers"] = [{k: v for k, v in t.items() if k != "path"} for t in manifest["teachers"]]
    out.pop("data_files", None)
    out.pop("has_pooled", None)
    out.pop("arrays", None)  # what was written, checked separately (_verify_arrays)
    # Not part of the key: a cache built with pooled vectors also serves a run without.
    out.pop("pooled", None)
    return out


def cache_key(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(repr(sorted(_comparable(manifest).items())).encode()).hexdigest()[:16]


def default_cache_root(teacher_path: Path) -> Path:
    """Next to the (first) teacher when writable, else the user cache folder."""
    if os.access(teacher_path, os.W_OK):
        return teacher_path / "soft_targets"

    return textdistill_home() / "soft_targets"


@torch.inference_mode()
def run_teacher(
    teacher: LoadedModel,
    enc: Encoded,
    *,
    batch_size: int = 256,
    with_pooled: bool = True,
    progress: bool = True,
    logits_out: np.ndarray | None = None,
    pooled_out: np.ndarray | None = None,
    batches: Sequence[Sequence[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (N, C) and pooled vectors (N, H) of one model over encoded rows, in row order.

    Rows are run in length-sorted batches (far less padding), or in the given ``batches``
    of row indices (rows left out of them are not computed); results are scattered back
    to their original positions, directly into ``logits_out``/``pooled_out`` when given
    (e.g. memory-mapped arrays).
    """
    model = teacher.model
    device = next(model.parameters()).device
    n = len(enc)
    num_labels = len(teacher.label_names)
    logits = logits_out if logits_out is not None else np.zeros((n, num_labels), np.float32)
    pooled = pooled_out
    if batches is None:
        batches = length_sorted_batches(enc.lengths, batch_size)
    bar = progress_bar(
        batches, desc=f"teacher {teacher.path.name}", disable=not progress, unit="batch"
    )
    for idx in bar:
        rows = np.asarray(idx)
        batch = encoded_batch(enc, rows)
        out = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        )
        logits[rows] = out.logits.float().cpu().numpy()
        if with_pooled and out.hidden is not None:
            if pooled is None:
                pooled = np.zeros((n, out.hidden.shape[-1]), np.float16)
            pooled[rows] = out.hidden.float().cpu().numpy().astype(np.float16)
    return logits, pooled


class _Damaged(Exception):
    """A cache folder that is not what its manifest says; the message says what is wrong."""


def _load_existing(path: Path, expected: dict[str, Any]) -> SoftTargets | None:
    """The valid cache at ``path``, or None (missing, stale or damaged: to be rebuilt).

    Damage is logged as a warning, staleness at INFO; neither ever raises.
    """
    try:
        return _read_cache(path, expected)
    except _Damaged as err:
        log.warning("soft-target cache at %s is damaged (%s); rebuilding it", path, err)
        return None


def _read_cache(path: Path, expected: dict[str, Any]) -> SoftTargets | None:
    mf = path / "manifest.json"
    if not mf.is_file():
        if path.is_dir():
            # atomic_dir writes the manifest into the folder before it appears: one without
            # it was damaged afterwards.
            raise _Damaged("manifest.json is missing")
        return None
    stored = _read_manifest(mf)
    if _comparable(stored) != _comparable(expected):
        # The folder is named by the key of exactly this comparison (cache_key), and a
        # cache for other texts or teachers lives under another name: a mismatch here
        # means the manifest was changed after it was written.
        raise _Damaged("manifest.json does not match the key its folder is named by")
    if expected["pooled"] and not stored.get("pooled"):
        log.info("soft-target cache at %s has no pooled vectors; rebuilding with them", path)
        return None
    arrays = _verify_arrays(path, stored, expected)
    if "logits.npy" not in arrays:
        raise _Damaged("the manifest lists no logits.npy")
    if stored.get("has_pooled") and "pooled.npy" not in arrays:
        raise _Damaged("the manifest promises pooled vectors but lists no pooled.npy")
    return SoftTargets(
        logits=arrays["logits.npy"], pooled=arrays.get("pooled.npy"), manifest=stored, path=path
    )


def _read_manifest(mf: Path) -> dict[str, Any]:
    try:
        stored = read_json(mf)
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError included
        raise _Damaged(f"manifest.json is not readable JSON: {err}") from None
    if not isinstance(stored, dict):
        raise _Damaged(f"manifest.json holds a JSON {type(stored).__name__}, not an object")
    missing = [k for k in _MANIFEST_FIELDS if k not in stored]
    if missing:
        raise _Damaged(f"manifest.json lacks {', '.join(missing)}")
    teachers, arrays = stored["teachers"], stored["arrays"]
    if not isinstance(teachers, list) or not all(isinstance(t, dict) for t in teachers):
        raise _Damaged("manifest.json: 'teachers' is not a list of objects")
    if not isinstance(arrays, dict) or not all(isinstance(a, dict) for a in arrays.values()):
        raise _Damaged("manifest.json: 'arrays' is not an object of objects")
    return stored


def _verify_arrays(
    path: Path, stored: dict[str, Any], expected: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Every array the manifest lists, memory-mapped, after checking its content.

    The sha256 comes first: it catches any change of the bytes (zeroed, reversed rows, a
    flipped bit) that a shape check cannot; the structural checks after it make a manifest
    that was edited to match a bad file fail too.
    """
    rows, width = int(expected["rows"]), len(expected["classes"])
    out: dict[str, np.ndarray] = {}
    for name, info in stored["arrays"].items():
        if name not in _ARRAY_FILES:
            raise _Damaged(f"the manifest lists an unknown array {name!r}")
        file = path / name
        if not file.is_file():
            raise _Damaged(f"{name} is missing")
        try:
            digest = file_sha256(file)
        except OSError as err:
            raise _Damaged(f"{name} is not readable: {err}") from None
        if digest != info.get("sha256"):
            raise _Damaged(f"{name} does not match its recorded sha256")
        try:
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:  # pickled or not an .npy file
            raise _Damaged(f"{name} is not a plain .npy array: {err}") from None
        # Pooled vectors are as wide as the teacher's sentence vector, which only the
        # model knows; the recorded shape (under the checksum's protection) stands for it.
        width_here = width if name == "logits.npy" else (arr.shape[-1] if arr.ndim else -1)
        want_shape = [rows, width_here]
        if list(arr.shape) != info.get("shape") or list(arr.shape) != want_shape:
            raise _Damaged(
                f"{name} has shape {list(arr.shape)}, expected {want_shape} "
                f"(manifest: {info.get('shape')})"
            )
        if arr.dtype != _ARRAY_FILES[name]:
            raise _Damaged(f"{name} has dtype {arr.dtype}, expected {_ARRAY_FILES[name]}")
        if not _all_finite(arr):
            raise _Damaged(f"{name} holds NaN or infinite values")
        out[name] = arr
    return out


def _all_finite(arr: np.ndarray) -> bool:
    return all(
        bool(np.isfinite(arr[i : i + _FINITE_ROWS]).all()) for i in range(0, len(arr), _FINITE_ROWS)
    )


def _array_records(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256, shape and dtype of every array file in a freshly assembled cache folder."""
    records: dict[str, dict[str, Any]] = {}
    for name in _ARRAY_FILES:
        file = folder / name
        if file.is_file():
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
            records[name] = {
                "sha256": file_sha256(file),
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
            }
            del arr  # release the map before the folder is renamed (Windows)
    return records


def build_soft_targets(
    teacher_paths: Sequence[str | Path],
    texts: Sequence[str],
    *,
    cache_dir: str | Path | None = None,
    weights: Sequence[float] | None = None,
    ensemble: str = "logprob",
    with_pooled: bool = True,
    batch_size: int = 256,
    data_files: dict[str, str] | None = None,
    rebuild: bool = False,
    progress: bool = True,
    encode_cache_dir: Path | None = None,
) -> SoftTargets:
    """Return the teacher(s)' soft targets for ``texts``, from the cache when it is valid.

    With several teachers the cached logits are the ensemble's (see
    :func:`combine_ensemble`) and the pooled vectors are the first teacher's that has them.

    Under ``accelerate launch``/``torchrun`` this is collective: every process must call it
    with the same arguments; the rows are shared out between the processes (each runs the
    teachers on its own device), the main process writes the one cache, and every process
    returns it. ``cache_dir`` must then be on a filesystem all the processes see.
    """
    if not teacher_paths:
        raise UserError("at least one teacher folder is needed")
    teachers = [load_teacher(p) for p in teacher_paths]
    names = teachers[0].label_names
    for t in teachers[1:]:
        if t.label_names != names:
            raise UserError(f"{t.path}: its labels differ from {teachers[0].path}'s")
    expected = expected_manifest(
        teachers,
        texts,
        weights=weights,
        ensemble=ensemble,
        with_pooled=with_pooled,
        data_files=data_files,
    )
    root = Path(cache_dir) if cache_dir is not None else default_cache_root(teachers[0].path)
    path = _agreed_path(root, expected)
    if not rebuild and (hit := _agreed_hit(path, expected)) is not None:
        if distributed.is_main_process():
            log.info("using cached soft targets at %s", path)
        return hit
    job = _BuildJob(
        teachers=teachers,
        texts=texts,
        num_labels=len(names),
        pooled_owner=_pooled_owner(teachers, with_pooled),
        batch_size=batch_size,
        progress=progress,
        encode_cache_dir=encode_cache_dir,
    )
    if distributed.is_main_process():
        with atomic_dir(path) as tmp:
            distributed.broadcast_object(str(tmp))
            job.run_share(tmp)
            distributed.wait_for_everyone()
            has_pooled = job.assemble(tmp, weights, ensemble)
            manifest = dict(expected, has_pooled=has_pooled, arrays=_array_records(tmp))
            write_json(tmp / "manifest.json", manifest)
    else:
        tmp = Path(distributed.broadcast_object(None))
        job.run_share(tmp)
        distributed.wait_for_everyone()
    distributed.wait_for_everyone()  # the main process has renamed the folder into place
    loaded = _load_existing(path, expected)
    if loaded is None:
        raise UserError(_unshared_message(path))
    if distributed.is_main_process():
        log.info("cached soft targets for %d rows at %s", len(texts), path)
    return loaded


def _agreed_path(root: Path, expected: dict[str, Any]) -> Path:
    """The cache folder: the main process's choice, after checking that the keys agree.

    Differing keys mean the processes were given different texts or teachers (e.g.
    randomness that is not seeded): sharing rows out between them would then mix data.
    The root may differ (a teacher folder writable on one machine only); the main
    process's is used.
    """
    key = cache_key(expected)
    if not distributed.is_distributed():
        return root / key
    main_root, main_key = distributed.broadcast_object((str(root), key))
    if main_key != key:
        raise UserError(
            f"process {distributed.process_index()} computed another soft-target cache key "
            "than the main process: the processes do not see the same transfer texts or "
            "teacher files; make the data preparation deterministic and the folders shared"
        )
    return Path(main_root) / key


def _agreed_hit(path: Path, expected: dict[str, Any]) -> SoftTargets | None:
    """The valid cache at ``path`` if the main process found one (every process agrees)."""
    hit = _load_existing(path, expected)
    if not distributed.broadcast_object(hit is not None):
        return None
    if hit is None:
        raise UserError(_unshared_message(path))
    return hit


def _unshared_message(path: Path) -> str:
    if not distributed.is_distributed():
        # One process wrote and verified nothing else: the files changed under it.
        return (
            f"the soft-target cache {path} did not read back correctly right after it was "
            "written (see the warning above); check the disk and run again"
        )
    return (
        f"process {distributed.process_index()} cannot read the soft-target cache {path} "
        "that the main process wrote; with several machines, put the cache on a shared "
        "filesystem (--cache-dir)"
    )


def _pooled_owner(teachers: Sequence[Teacher], with_pooled: bool) -> int | None:
    """Index of the teacher whose pooled vectors are cached (the first that has them)."""
    if not with_pooled:
        return None
    for i, t in enumerate(teachers):
        if isinstance(t, LoadedModel) and sentence_width(t.model) is not None:
            return i
    return None


@dataclass
class _BuildJob:
    """One cache build: each process's share of the inference, then the main's assembly.

    Part files in the temporary folder, per teacher ``t`` and process ``r``:
    ``part-<t>-<r>.rows.npy`` (the rows it ran, in its order), ``.logits.npy`` and, for the
    pooled teacher, ``.pooled.npy`` (the values of those rows, in the same order).
    """

    teachers: Sequence[Teacher]
    texts: Sequence[str]
    num_labels: int
    pooled_owner: int | None
    batch_size: int
    progress: bool
    encode_cache_dir: Path | None

    def run_share(self, tmp: Path) -> None:
        """Run every teacher on this process's batches and write its part files."""
        rank = distributed.process_index()
        for t_idx, teacher in enumerate(self.teachers):
            if isinstance(teacher, Predictions):
                # A table look-up, done whole by the main process (the others add no rows).
                rows = np.arange(len(self.texts) if rank == 0 else 0, dtype=np.int64)
                prefix = tmp / f"part-{t_idx}-{rank}"
                np.save(_part_file(prefix, "rows"), rows)
                np.save(
                    _part_file(prefix, "logits"),
                    teacher.lookup(self.texts)
                    if rank == 0
                    else np.zeros((0, self.num_labels), np.float32),
                )
                continue
            # The main process encodes and fills the encode cache; the others then read it.
            with distributed.main_process_first():
                enc = encode_cached(
                    teacher.tokenizer, self.texts, teacher.max_len, cache_dir=self.encode_cache_dir
                )
            # The global batches, as a single process forms them, so results are identical.
            batches = distributed.shard(length_sorted_batches(enc.lengths, self.batch_size))
            self._write_part(tmp / f"part-{t_idx}-{rank}", teacher, enc, batches, t_idx)

    def _write_part(
        self,
        prefix: Path,
        teacher: LoadedModel,
        enc: Encoded,
        batches: Sequence[Sequence[int]],
        t_idx: int,
    ) -> None:
        rows = np.fromiter(chain.from_iterable(batches), dtype=np.int64, count=-1)
        np.save(_part_file(prefix, "rows"), rows)
        # The share's rows, contiguous in run order: batch k is a slice of ``local``.
        local = enc.take(rows)
        bounds = [0, *accumulate(len(b) for b in batches)]
        local_batches = [range(a, b) for a, b in pairwise(bounds)]
        logits = _new_array(_part_file(prefix, "logits"), (len(rows), self.num_labels), np.float32)
        pooled = None
        if t_idx == self.pooled_owner:
            width = sentence_width(teacher.model)
            assert width is not None  # _pooled_owner picked a teacher with a sentence vector
            pooled = _new_array(_part_file(prefix, "pooled"), (len(rows), width), np.float16)
        if len(rows):
            run_teacher(
                teacher,
                local,
                batch_size=self.batch_size,
                with_pooled=pooled is not None,
                progress=self.progress and distributed.is_main_process(),
                logits_out=logits,
                pooled_out=pooled,
                batches=local_batches,
            )
        for arr in (logits, pooled):
            if isinstance(arr, np.memmap):
                arr.flush()

    def assemble(self, tmp: Path, weights: Sequence[float] | None, ensemble: str) -> bool:
        """Main process: scatter every part into ``logits.npy``/``pooled.npy``, in row order.

        Returns whether pooled vectors were written. The part files are removed.
        """
        n = len(self.texts)
        single = len(self.teachers) == 1
        members: list[np.ndarray] = []
        for t_idx in range(len(self.teachers)):
            # One teacher streams straight into the cache file; ensemble members are combined
            # in memory (N x C floats each) once all are there.
            out = (
                _new_array(tmp / "logits.npy", (n, self.num_labels), np.float32)
                if single
                else np.zeros((n, self.num_labels), np.float32)
            )
            self._scatter(tmp, t_idx, "logits", out)
            members.append(out)
            if t_idx == self.pooled_owner:
                owner = self.teachers[t_idx]
                assert isinstance(owner, LoadedModel)
                width = sentence_width(owner.model)
                assert width is not None
                pooled = _new_array(tmp / "pooled.npy", (n, width), np.float16)
                self._scatter(tmp, t_idx, "pooled", pooled)
        if not single:
            np.save(tmp / "logits.npy", combine_ensemble(members, weights, ensemble))
        for part in tmp.glob("part-*.npy"):
            part.unlink()
        return self.pooled_owner is not None

    def _scatter(self, tmp: Path, t_idx: int, kind: str, out: np.ndarray) -> None:
        covered = 0
        for rank in range(distributed.num_processes()):
            prefix = tmp / f"part-{t_idx}-{rank}"
            rows = np.load(_part_file(prefix, "rows"), allow_pickle=False)
            values = np.load(_part_file(prefix, kind), mmap_mode="r", allow_pickle=False)
            for start in range(0, len(rows), _SCATTER_ROWS):
                stop = start + _SCATTER_ROWS
                out[rows[start:stop]] = values[start:stop]
            covered += len(rows)
        if covered != len(out):
            raise RuntimeError(f"the processes computed {covered} of {len(out)} rows ({kind})")
        if isinstance(out, np.memmap):
            out.flush()


def _part_file(prefix: Path, kind: str) -> Path:
    return prefix.with_name(f"{prefix.name}.{kind}.npy")


def _new_array(path: Path, shape: tuple[int, int], dtype: type[np.generic]) -> np.ndarray:
    """A zero-filled ``.npy`` file of ``shape``, opened memory-mapped for writing.

    A file without rows is written directly: there is nothing to map.
    """
    if shape[0] == 0:
        empty = np.zeros(shape, dtype)
        np.save(path, empty)
        return empty
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
