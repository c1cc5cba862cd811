"""Small file utilities: atomic writes, hashing, JSON."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from textdistill.core.errors import WriteError

log = logging.getLogger(__name__)

WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})
"""The errors a write meets on a full disk, over quota, without permission or read-only."""

_WRITE_MESSAGES = {os.strerror(code).lower(): code for code in sorted(WRITE_ERRNOS, reverse=True)}

STALE_LEFTOVER_S = 24 * 3600
"""A temporary entry without an owner process id (older layout) is stale after a day."""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def files_sha256(paths: list[Path]) -> str:
    """One hash over several files, in the given order, names included."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, directory: bool = False) -> None:
    """Give a temporary file or folder the permissions a plain ``open``/``mkdir`` would.

    ``mkstemp``/``mkdtemp`` create private (0600/0700) entries; a model folder or cache
    must be as readable as anything else its owner writes.
    """
    base = 0o777 if directory else 0o666
    os.chmod(path, base & ~_umask())


def as_write_error(err: BaseException) -> OSError | None:
    """``err`` as an :class:`OSError` when it is a failed write (full disk, no permission,
    read-only file system), else None.

    Libraries written in Rust or C++ report these as plain exceptions that carry only the
    operating system's message (``safetensors``: ``SafetensorError: ... No space left on
    device``; ``tokenizers``: ``Exception: No space left on device (os error 28)``); the
    message is matched against the system's own wording.
    """
    if isinstance(err, OSError):
        return err if err.errno in WRITE_ERRNOS else None
    text = str(err).lower()
    for message, code in _WRITE_MESSAGES.items():
        if message in text:
            return OSError(code, os.strerror(code), str(err))
    return None


def write_error(what: str, err: BaseException, *, kept: str, hint: str = "") -> WriteError:
    """One clean message for a failed write: ``could not write WHAT: REASON (KEPT); free
    space or fix permissions and run again[; HINT]``."""
    reason = as_write_error(err) or err
    detail = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
    msg = (
        f"could not write {what}: {detail} ({kept}); "
        "free some space or fix the permissions and run the command again"
    )
    return WriteError(msg + (f"; {hint}" if hint else ""))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


_ACTIVE: set[Path] = set()
"""Temporary entries this process is writing now (never removed as leftovers)."""

_FOLDER_LEFTOVER = re.compile(r"(?P<what>tmp|old)-(?P<pid>[0-9]+)(?:-.*)?")
_FOLDER_LEGACY = re.compile(r"tmp-.+")  # before the process id was part of the name
_FILE_LEFTOVER = re.compile(r"(?:(?P<pid>[0-9]+)\.)?[^.]+\.tmp")


def _owner_gone(entry: Path, pid: int | None) -> bool:
    """Whether the process that made ``entry`` can no longer finish it."""
    if entry in _ACTIVE:
        return False
    if pid == os.getpid():
        return True  # ours but not being written: left by a failure this process survived
    if pid is not None:
        return not _pid_alive(pid)
    try:
        return time.time() - entry.lstat().st_mtime > STALE_LEFTOVER_S
    except OSError:
        return False


def repair_interrupted(target: str | Path) -> None:
    """Undo what an interrupted :func:`atomic_dir` or :func:`atomic_write` left next to
    ``target``, logging each step.

    A replacement renames ``target`` to ``.NAME.old-PID``, then the finished temporary folder
    to ``target``; killed between the two, only the hidden ``.old`` copy is left, and it is
    renamed back. Temporary entries (``.NAME.tmp-PID-*``, ``.NAME.PID.*.tmp``) and ``.old``
    copies whose writing process is gone are removed. Entries of live processes are left
    alone, so a concurrent writer is never disturbed. Problems (e.g. a read-only folder) are
    logged, not raised: the repair must never stop a load.
    """
    target = Path(target)
    prefix = f".{target.name}."
    try:
        entries = [e for e in target.parent.iterdir() if e.name.startswith(prefix)]
    except OSError:
        return
    olds: list[tuple[float, Path]] = []
    for entry in entries:
        rest = entry.name[len(prefix) :]
        folder = _FOLDER_LEFTOVER.fullmatch(rest)
        file = _FILE_LEFTOVER.fullmatch(rest)
        if folder is not None and entry.is_dir():
            pid: int | None = int(folder.group("pid"))
            what = folder.group("what")
        elif _FOLDER_LEGACY.fullmatch(rest) and entry.is_dir():
            pid, what = None, "tmp"
        elif file is not None and entry.is_file():
            pid, what = (int(file.group("pid")) if file.group("pid") else None), "file"
        else:
            continue  # another file whose name merely starts the same way
        if not _owner_gone(entry, pid):
            continue
        if what == "old":
            with contextlib.suppress(OSError):
                olds.append((entry.lstat().st_mtime, entry))
        else:
            _remove(entry, "an unfinished temporary " + ("file" if what == "file" else "folder"))
    olds.sort()
    if olds and not target.exists():
        _, newest = olds.pop()
        try:
            os.replace(newest, target)
            log.warning(
                "%s: restored the previous version from %s, left by an interrupted replacement",
                target,
                newest.name,
            )
        except OSError as err:
            log.warning("%s: could not restore %s: %s", target, newest.name, err)
    for _, old in olds:
        _remove(old, "a previous version left by an interrupted replacement")


def _remove(entry: Path, what: str) -> None:
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        log.warning("removed %s: %s", what, entry)
    except OSError as err:
        log.warning("could not remove %s %s: %s", what, entry, err)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` in one rename when the block succeeds.

    Readers never see half a file; on error the temporary file is removed and ``path`` is
    left as it was. The temporary file is ``.NAME.PID.RANDOM.tmp``, so one left by a killed
    process is recognised (and removed) by the next write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_interrupted(path)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
    )
    _ACTIVE.add(Path(tmp))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        _ACTIVE.discard(Path(tmp))


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target`` in one rename.

    On any error the temporary folder is removed and ``target`` is left as it was, so a
    crash or a full disk never leaves a half-written folder that later loads. Leftovers of
    an earlier, killed replacement are repaired first (:func:`repair_interrupted`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    repair_interrupted(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{os.getpid()}-"))
    _ACTIVE.add(tmp)
    old: Path | None = None
    try:
        yield tmp
        _publish_mode(tmp, directory=True)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            _ACTIVE.add(old)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not target.exists():
            os.replace(old, target)  # the second rename failed: put the old version back
        raise
    finally:
        _ACTIVE.discard(tmp)
        if old is not None:
            _ACTIVE.discard(old)


def dir_size_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def texts_sha256(texts: Iterable[str]) -> str:
    """A hash of the texts in order; each is length-prefixed, so no separator is ambiguous."""
    h = hashlib.sha256()
    for text in texts:
        data = str(text).encode("utf-8")
        h.update(struct.pack("<Q", len(data)))
        h.update(data)
    return h.hexdigest()
