"""The HTTP service against its own OpenAPI schema: a bounded, seeded schemathesis run.

Schemathesis generates valid and invalid requests for every operation from ``/openapi.json``
and checks each answer: never a 5xx, a documented status, a body that matches the documented
schema, invalid data rejected and valid data accepted. It runs in-process (ASGI), with a
fixed seed and few examples per operation, so the run is the same every time and short.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from serving import save_serving_student, serving_tokenizer  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from textdistill.deploy.serve import ServeSettings, create_app  # noqa: E402
from textdistill.inference.load import load  # noqa: E402

# Small limits keep generated bodies small (and fast to classify) while every limit is hit.
LIMITS = ServeSettings(max_texts=4, max_text_chars=40, max_batch_size=8, max_wait_ms=0)
SEED = 20240615
EXAMPLES = 50


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return serving_tokenizer()


@pytest.fixture(scope="module")
def student_dir(
    tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerFast
) -> Path:
    """The same tiny BiLSTM folder as tests/test_serve.py builds."""
    return save_serving_student(tmp_path_factory.mktemp("schema") / "student", tokenizer)


OPERATIONS = [
    ("POST", "/v1/classify"),
    ("GET", "/healthz"),
    ("GET", "/v1/model"),
    ("GET", "/v1/stats"),
]


@pytest.fixture(scope="module")
def api_schema(student_dir: Path) -> Any:
    app = create_app(load(student_dir), LIMITS)
    config = schemathesis.Config.from_dict({"seed": SEED})
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


# Invalid data needs something to be invalid: the GET operations take no parameters.
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode if method == "POST" else [GenerationMode.POSITIVE])
]


@pytest.mark.parametrize(
    ("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES]
)
def test_the_service_honours_its_schema(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    """Generated valid and invalid requests; every default check on every answer: no 5xx,
    a documented status and content type, a body that conforms to the documented schema,
    invalid data rejected with 4xx and valid data accepted."""
    operation = api_schema[path][method]

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=False,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure shows as found
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        case.call_and_validate()

    check()
