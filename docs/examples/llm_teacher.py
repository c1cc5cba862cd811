"""Turn an LLM's log-probabilities into a textdistill predictions file (a teacher).

For each text, the model is asked to answer with one class name; the log-probabilities of
the first answer token are read for every class (``top_logprobs``), renormalised over the
classes, and written as ``{"text": ..., "probs": {class: p}}``, one JSON line per text:

    python docs/examples/llm_teacher.py --data data/sample --model gpt-4o-mini \
        --texts data/sample/train.txt --out runs/llm.jsonl
    textdistill distill --teacher runs/llm.jsonl --data data/sample --mode soft --out runs/s

It uses any OpenAI-compatible chat API (``pip install openai``; ``OPENAI_BASE_URL`` /
``OPENAI_API_KEY`` pick the server, e.g. a local vLLM or llama.cpp server). Class names are
best kept to single tokens; a class none of whose spellings is among the top
log-probabilities gets probability 0 before renormalisation. ``probs_from_logprobs`` is the
part worth reusing with another client; it is tested offline (tests/test_teachers.py).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

PROMPT = (
    "Classify the news title into exactly one of these classes: {classes}.\n"
    "Title: {text}\nAnswer with the class name only."
)


def probs_from_logprobs(
    top_logprobs: Mapping[str, float], classes: Sequence[str]
) -> dict[str, float]:
    """Class probabilities from the first answer token's top log-probabilities.

    A class's score is the summed probability of the tokens that start its name (case and
    surrounding spaces ignored); the scores are renormalised to sum to 1. With no class
    among the tokens, the distribution is uniform (the model gave no usable answer).
    """
    scores = dict.fromkeys(classes, 0.0)
    for token, logprob in top_logprobs.items():
        piece = token.strip().lower()
        if not piece:
            continue
        for name in classes:
            if name.lower().startswith(piece):
                scores[name] += math.exp(logprob)
                break
    total = sum(scores.values())
    if total <= 0:
        return {name: 1.0 / len(classes) for name in classes}
    return {name: s / total for name, s in scores.items()}


def prediction_lines(
    texts: Iterable[str],
    classes: Sequence[str],
    top_logprobs_of: Callable[[str], Mapping[str, float]],
) -> Iterable[str]:
    """JSONL lines for ``texts``; ``top_logprobs_of(prompt)`` returns {token: logprob}."""
    for text in texts:
        prompt = PROMPT.format(classes=", ".join(classes), text=text)
        probs = probs_from_logprobs(top_logprobs_of(prompt), classes)
        yield json.dumps({"text": text, "probs": probs}, ensure_ascii=False)


def openai_top_logprobs(model: str, k: int = 20) -> Callable[[str], dict[str, float]]:
    from openai import OpenAI  # imported here: the offline test needs no client

    client = OpenAI()

    def ask(prompt: str) -> dict[str, float]:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=1,
            temperature=0,
            logprobs=True,
            top_logprobs=k,
        )
        first = reply.choices[0].logprobs.content[0]
        return {t.token: t.logprob for t in first.top_logprobs}

    return ask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="Folder with class.txt.")
    parser.add_argument("--texts", type=Path, required=True, help="text<TAB>label or text lines.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    classes = (args.data / "class.txt").read_text(encoding="utf-8").split()
    lines = args.texts.read_text(encoding="utf-8").splitlines()
    texts = list(dict.fromkeys(line.split("\t")[0] for line in lines if line.strip()))
    ask = openai_top_logprobs(args.model)
    with args.out.open("w", encoding="utf-8") as f:
        for line in prediction_lines(texts, classes, ask):
            f.write(line + "\n")


if __name__ == "__main__":
    main()
