"""Start textdistill on several local processes: for the multi-process tests and benchmarks.

Not part of the package: users launch with ``accelerate launch`` or ``torchrun`` (see
docs/SCALING.md); this is the same launch, spelled once for the test suite and
``benchmarks/cache_throughput.py``.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence


def free_port() -> int:
    """A free TCP port on the loopback interface (for the launcher's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(processes: int, target: Sequence[str]) -> list[str]:
    """The command that runs ``python TARGET...`` on ``processes`` local processes.

    One process is a plain interpreter. More use ``accelerate launch --multi_gpu``, which
    on a machine without CUDA starts gloo CPU processes through torchrun (``--cpu`` with
    ``--num_processes`` starts only one process in accelerate 1.x).
    """
    if processes == 1:
        return [sys.executable, *target]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        *target,
    ]
