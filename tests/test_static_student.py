"""The static student: n-gram hashing and pooling pinned by hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from textdistill.models.students import StudentSpecError, build_student
from textdistill.models.students.static import HASH_PRIME, StaticStudent, ngram_ids, zipf_weights


def test_ngram_ids_by_hand() -> None:
    ids = torch.tensor([[5, 7, 9, 0], [3, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    m = 101
    bi, bi_ok = ngram_ids(ids, mask, 2, m)
    assert bi.tolist() == [
        [(5 * HASH_PRIME + 7) % m, (7 * HASH_PRIME + 9) % m, (9 * HASH_PRIME + 0) % m],
        [(3 * HASH_PRIME) % m, 0, 0],
    ]
    assert bi_ok.tolist() == [[True, True, False], [False, False, False]]
    tri, tri_ok = ngram_ids(ids, mask, 3, m)
    first = ((5 * HASH_PRIME + 7) % m * HASH_PRIME + 9) % m
    assert tri[0, 0].item() == first
    assert tri_ok.tolist() == [[True, False], [False, False]]
    # Shorter than the order: empty, not an error.
    short, short_ok = ngram_ids(ids[:, :2], mask[:, :2], 3, m)
    assert short.shape == (2, 0) and short_ok.shape == (2, 0)


def test_pooling_is_the_weighted_mean_of_tokens_and_ngrams() -> None:
    model = StaticStudent(vocab_size=10, num_labels=2, embed_dim=3, buckets=7, ngram_orders=[2])
    with torch.no_grad():
        model.embedding.weight.copy_(torch.arange(30, dtype=torch.float32).view(10, 3))
        model.ngrams.weight.copy_(-torch.arange(21, dtype=torch.float32).view(7, 3))
    ids = torch.tensor([[4, 6, 0]])
    mask = torch.tensor([[1, 1, 0]])
    out = model.eval()(ids, mask)
    bucket = (4 * HASH_PRIME + 6) % 7
    expected = (
        model.embedding.weight[4] + model.embedding.weight[6] + model.ngrams.weight[bucket]
    ) / 3
    torch.testing.assert_close(out.hidden[0], expected)  # type: ignore[index]
    torch.testing.assert_close(out.logits[0], model.classifier(expected))


def test_zipf_weights_by_hand() -> None:
    w = zipf_weights(3, a=0.5)
    h = 1 + 1 / 2 + 1 / 3
    p = torch.tensor([1 / h, 1 / (2 * h), 1 / (3 * h)])
    torch.testing.assert_close(w, (0.5 / (0.5 + p)).float())
    assert w[0] < w[1] < w[2]  # frequent tokens weigh less


def test_zipf_weighting_in_the_mean() -> None:
    model = StaticStudent(
        vocab_size=4, num_labels=2, embed_dim=2, ngram_orders=[], weighting="zipf"
    )
    with torch.no_grad():
        model.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    out = model.eval()(torch.tensor([[1, 3]]), torch.tensor([[1, 1]]))
    w = model.token_weight
    expected = (w[1] * model.embedding.weight[1] + w[3] * model.embedding.weight[3]) / (w[1] + w[3])
    torch.testing.assert_close(out.hidden[0], expected)  # type: ignore[index]


def test_an_all_padding_row_gives_finite_output() -> None:
    model = build_student("static", "small", 20, 3, embed_dim=4, buckets=11).eval()
    out = model(torch.zeros((2, 5), dtype=torch.long), torch.zeros((2, 5), dtype=torch.long))
    assert torch.isfinite(out.logits).all()


def test_small_preset_is_under_five_percent_of_bert_base() -> None:
    # bert-base: 102.3M parameters (docs/BENCHMARKS.md); a 21,128-token vocabulary.
    model = build_student("static", "small", 21_128, 10)
    params = sum(p.numel() for p in model.parameters())
    assert params < 0.05 * 102_280_000


def test_token_weights_are_saved_with_the_model() -> None:
    model = build_student("static", "small", 30, 2, embed_dim=4, buckets=5, weighting="zipf")
    assert "token_weight" in model.state_dict()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ngram_orders": [1, 2]}, "ngram_orders must lie in 2..5"),
        ({"ngram_orders": [6]}, "ngram_orders must lie in 2..5"),
        ({"buckets": 0}, "buckets=0"),
        ({"hidden_dim": -1}, "hidden_dim must be >= 0"),
        ({"weighting": "tfidf"}, "valid: mean, zipf"),
    ],
)
def test_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(StudentSpecError, match=message):
        build_student("static", "small", 30, 2, **options)


def test_no_ngrams_is_a_bag_of_tokens() -> None:
    model = build_student("static", "small", 30, 2, embed_dim=4, ngram_orders=[]).eval()
    nn.init.normal_(model.ngrams.weight)  # unused: changing it changes nothing
    ids, mask = torch.tensor([[3, 4, 5]]), torch.ones((1, 3), dtype=torch.long)
    expected = model.embedding.weight[[3, 4, 5]].mean(0)
    torch.testing.assert_close(model(ids, mask).hidden[0], expected)  # type: ignore[index]


def test_onnx_graph_hashes_the_same_ngram_ids(tmp_path) -> None:
    """The export computes the n-gram buckets itself: its ids equal the training path's."""
    ort = pytest.importorskip("onnxruntime")

    class Ids(nn.Module):
        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
            bi, bi_ok = ngram_ids(ids, mask, 2, 50_000)
            tri, tri_ok = ngram_ids(ids, mask, 3, 50_000)
            return bi, bi_ok.long(), tri, tri_ok.long()

    g = torch.Generator().manual_seed(0)
    # Ids near a 250,000-token vocabulary: the hash's products stay far from int64's limit.
    ids = torch.randint(0, 250_000, (5, 9), generator=g)
    mask = (torch.arange(9)[None, :] < torch.tensor([[9], [1], [2], [3], [7]])).long()
    path = tmp_path / "ids.onnx"
    torch.onnx.export(
        Ids(),
        (ids[:2, :4], mask[:2, :4]),
        str(path),
        input_names=["ids", "mask"],
        dynamic_axes={"ids": {0: "b", 1: "t"}, "mask": {0: "b", 1: "t"}},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})
    want = Ids()(ids, mask)
    for g_, w in zip(got, want, strict=True):
        assert (g_ == w.numpy()).all()
    assert int(want[0].max()) < 50_000 and int(want[0].min()) >= 0
