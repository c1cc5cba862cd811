"""The test suite's own comparison of nested records (used by the resume tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

HISTORY = [
    {"stage": "mlm", "step": 2, "loss": 3.25, "eval": None},
    {"stage": "teacher", "step": 4, "eval": {"accuracy": 0.5, "loss": 1.0, "per_class": [1, 2]}},
]


def changed(path: tuple[Any, ...], value: Any) -> list[dict[str, Any]]:
    import copy

    out = copy.deepcopy(HISTORY)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def test_equal_histories_pass_within_the_tolerance(records_close: Callable[..., None]) -> None:
    records_close(HISTORY, HISTORY)
    records_close(changed((1, "eval", "loss"), 1.0 + 1e-9), HISTORY)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ((0, "loss"), 3.26),  # a number beyond the tolerance
        ((1, "eval", "accuracy"), 0.75),  # a nested number
        ((1, "eval", "per_class"), [1, 3]),  # a number in a nested list
        ((1, "eval", "per_class"), [1]),  # a shorter list
        ((0, "stage"), "teacher"),  # a string
        ((0, "eval"), 0),  # None is not 0
        ((1, "eval"), {"accuracy": 0.5, "loss": 1.0}),  # a missing key
    ],
)
def test_any_difference_fails(
    records_close: Callable[..., None], path: tuple[Any, ...], value: Any
) -> None:
    with pytest.raises(AssertionError):
        records_close(changed(path, value), HISTORY)


def test_an_extra_record_fails(records_close: Callable[..., None]) -> None:
    with pytest.raises(AssertionError, match="3 items != 2"):
        records_close([*HISTORY, {"stage": "teacher"}], HISTORY)
