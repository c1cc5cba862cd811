"""Process-state helpers for runs under ``accelerate launch`` or ``torchrun``.

Every question of the kind "which process am I, and should I write this file?" goes through
this module, for one reason: Accelerate keeps its process state in a process-wide singleton
(:class:`accelerate.PartialState`) that is configured by whoever creates it first, and later
calls with other arguments are silently ignored. A bare ``PartialState()`` on a machine
without CUDA finds the launcher's ``LOCAL_RANK`` but no GPU and falls back to a
single-process state, so every process would think it is the main one and they would all
write the same folders. :func:`state` creates it with ``cpu=True`` there, which selects the
``gloo`` backend and the real rank.

The rules the rest of the package follows:

* collective functions (:func:`wait_for_everyone`, :func:`broadcast_object`,
  :func:`on_main`, :func:`main_process_first`) must be called by every process in the same
  order, or the run hangs;
* only the main process writes shared outputs (model folders, caches, ``metrics.jsonl``,
  progress bars); the others wait and then read the result;
* with several machines, every path that one process writes and another reads must be on a
  shared filesystem.

When one process raises, the launcher (torchrun's elastic agent, which ``accelerate launch``
uses) stops the others, so a failure on the main process never leaves them waiting forever.

torch and Accelerate are imported inside the functions: the CLI asks for
:func:`launched_rank` to set up logging, and commands that train nothing should not pay for
loading torch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar, cast

if TYPE_CHECKING:
    import torch
    from accelerate import PartialState

T = TypeVar("T")

__all__ = [
    "broadcast_object",
    "device",
    "is_distributed",
    "is_main_process",
    "launched_rank",
    "main_process_first",
    "num_processes",
    "on_main",
    "process_index",
    "shard",
    "state",
    "use_cpu",
    "wait_for_everyone",
]

_TRUE = frozenset({"1", "true", "yes", "on"})
# Where launchers announce the global rank: torchrun/accelerate launch, then MPI flavours.
_RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")


def launched_rank() -> int:
    """This process's rank as its launcher announced it (0 without a launcher).

    Read from the environment, without loading torch or joining the process group: for
    decisions taken before any work starts, such as how much to log.
    """
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def use_cpu() -> bool:
    """Whether this process computes on the CPU: no CUDA device, or ``ACCELERATE_USE_CPU``.

    ``accelerate launch --cpu`` sets ``ACCELERATE_USE_CPU``; honouring it keeps a CPU run on
    the CPU even on a machine that has GPUs.
    """
    import torch

    forced = os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in _TRUE
    return forced or not torch.cuda.is_available()


def state() -> PartialState:
    """The process-wide Accelerate state, created with the right ``cpu`` flag on first use.

    Cheap after the first call. Without a launcher it is a single-process state; under
    ``torchrun``/``accelerate launch`` the first call joins the process group (``nccl`` on
    GPUs, ``gloo`` on CPUs).
    """
    from accelerate import PartialState

    return PartialState(cpu=use_cpu())


def num_processes() -> int:
    return int(state().num_processes)


def process_index() -> int:
    """This process's global rank, 0 on the main process."""
    return int(state().process_index)


def is_main_process() -> bool:
    return bool(state().is_main_process)


def is_distributed() -> bool:
    return num_processes() > 1


def device() -> torch.device:
    """The device this process computes on (``cuda:<local rank>`` or ``cpu``)."""
    return cast("torch.device", state().device)


def wait_for_everyone() -> None:
    """Barrier: return once every process has reached it (a no-op in a single process)."""
    state().wait_for_everyone()


def broadcast_object(obj: T | None) -> T:
    """The main process's ``obj`` (picklable), on every process; collective.

    The other processes pass anything (usually ``None``); their value is ignored.
    """
    from accelerate.utils import broadcast_object_list

    state()  # broadcast_object_list consults the (correctly created) process state
    box = [obj]
    broadcast_object_list(box, from_process=0)
    return cast(T, box[0])


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on the main process only and return its result on every process.

    For writing shared outputs: the others block until ``fn`` has finished, so whatever it
    wrote is complete when they continue, and they receive its (picklable) return value,
    e.g. the metadata of a saved model folder. Collective.
    """
    result = fn() if is_main_process() else None
    if not is_distributed():
        return cast(T, result)
    return broadcast_object(result)


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on the main process first, then on the others; collective.

    For work that fills an on-disk cache: the main process computes and stores it, the
    others find it stored instead of all computing it at once.
    """
    with state().main_process_first():
        yield


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of ``items``: every ``num_processes``-th one from its rank.

    Round-robin rather than contiguous, so length-sorted batches (longest first) spread the
    expensive ones evenly; a process may get none when there are fewer items than processes.
    """
    return list(items[process_index() :: num_processes()])
