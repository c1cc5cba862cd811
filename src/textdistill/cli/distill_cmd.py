"""``textdistill distill``: train a student from a teacher (or without one: mode none)."""

from __future__ import annotations

from pathlib import Path

import typer

from textdistill.cli.common import (
    BatchOpt,
    ConfigOpt,
    DataOpt,
    EpochsOpt,
    LabelMapOpt,
    LabelsOpt,
    LrOpt,
    MaxLenOpt,
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    VerboseOpt,
    console,
    data_overrides,
    resolve_config,
    setup_logging,
    train_overrides,
    user_errors,
)
from textdistill.core.errors import UserError


@user_errors
def distill(
    out: Path = typer.Option(..., "--out", "-o", help="Student folder to write."),
    teacher: list[Path] | None = typer.Option(
        None,
        "--teacher",
        "-t",
        help="Teacher: a textdistill or Hugging Face classifier folder (or hub id), or an "
        "ensemble folder; repeat for ensemble distillation.",
    ),
    data: Path | None = DataOpt,
    labels: Path | None = LabelsOpt,
    mode: str | None = typer.Option(
        None, "--mode", "-m", help="none (no teacher), hard, soft, hidden or layers."
    ),
    student: str | None = typer.Option(
        None, "--student", help="bilstm, textcnn, static or transformer."
    ),
    preset: str | None = typer.Option(None, "--preset", help="Student size preset."),
    temperature: float | None = typer.Option(None, "--temperature", "-T", help="Softmax T."),
    temperature_end: float | None = typer.Option(
        None, "--temperature-end", help="Anneal T linearly to this value."
    ),
    alpha: float | None = typer.Option(None, "--alpha", help="Weight of the KD term."),
    beta: float | None = typer.Option(None, "--beta", help="Weight of the hidden term."),
    hard_target: str | None = typer.Option(
        None, "--hard-target", help="CE target in soft mode: teacher (argmax) or gold."
    ),
    hidden_loss: str | None = typer.Option(None, "--hidden-loss", help="mse or cosine."),
    extra: list[Path] | None = typer.Option(
        None, "--extra", help="Unlabeled texts (one per line) added to the transfer set."
    ),
    teacher_weight: list[float] | None = typer.Option(
        None, "--teacher-weight", help="Ensemble weight, one per --teacher."
    ),
    ensemble: str | None = typer.Option(
        None, "--ensemble", help="Ensemble average of logprob (default) or prob."
    ),
    augment_copies: int | None = typer.Option(
        None,
        "--augment-copies",
        min=0,
        help="Perturbed copies of each transfer text, labelled by the teacher (0: none).",
    ),
    init_embeddings: str | None = typer.Option(
        None, "--init-embeddings", help="random, or teacher (PCA of its word embeddings)."
    ),
    embed_dim: int | None = typer.Option(
        None, "--embed-dim", min=2, help="Student embedding width (overrides the preset)."
    ),
    hidden_dim: int | None = typer.Option(
        None, "--hidden-dim", min=2, help="BiLSTM width per direction (overrides the preset)."
    ),
    num_filters: int | None = typer.Option(
        None, "--num-filters", min=1, help="TextCNN filters per width (overrides the preset)."
    ),
    buckets: int | None = typer.Option(
        None, "--buckets", min=1, help="Static student: rows of its hashed n-gram table."
    ),
    ngram_orders: str | None = typer.Option(
        None,
        "--ngram-orders",
        help="Static student: n-gram orders besides single tokens, e.g. 2,3 (none: tokens only).",
    ),
    layers: int | None = typer.Option(
        None,
        "--layers",
        min=1,
        help="Transformer student: how many of the teacher's layers it keeps (evenly spaced).",
    ),
    student_tokenizer: str | None = typer.Option(
        None,
        "--student-tokenizer",
        help="auto (the architecture's), shared (the teacher's) or chars (one per character).",
    ),
    epochs: int | None = EpochsOpt,
    batch_size: int | None = BatchOpt,
    lr: float | None = LrOpt,
    seed: int | None = SeedOpt,
    max_len: int | None = MaxLenOpt,
    resume: bool = ResumeOpt,
    label_map: Path | None = LabelMapOpt,
    quiet: bool = QuietOpt,
    config: Path | None = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Distill a teacher into a small student (BiLSTM, TextCNN, static embeddings, or a
    transformer built from K of a BERT teacher's layers).

    Without --max-len the student reads as many tokens as its teacher did.
    """
    from textdistill.core.config import load_config
    from textdistill.data.splits import open_corpus
    from textdistill.distill.run import distill as run_distill
    from textdistill.distill.run import preset_for

    setup_logging(verbose)
    if student is not None and preset is None:
        # The file's preset names a size of the file's architecture, not of --student's.
        base = load_config(config).student
        preset = preset_for(student, base.arch, base.preset)
    cfg = resolve_config(
        config,
        {
            **data_overrides(data, labels),
            "distill.teachers": [str(t) for t in teacher] if teacher else None,
            "distill.mode": mode,
            "distill.temperature": temperature,
            "distill.temperature_end": temperature_end,
            "distill.alpha": alpha,
            "distill.beta": beta,
            "distill.hard_target": hard_target,
            "distill.hidden_loss": hidden_loss,
            "distill.extra": [str(e) for e in extra] if extra else None,
            "distill.label_map": str(label_map) if label_map else None,
            "distill.teacher_weights": list(teacher_weight) if teacher_weight else None,
            "distill.ensemble": ensemble,
            "distill.augment_copies": augment_copies,
            "student.arch": student,
            "student.preset": preset,
            "student.init_embeddings": init_embeddings,
            "student.options.embed_dim": embed_dim,
            "student.options.hidden_dim": hidden_dim,
            "student.options.num_filters": num_filters,
            "student.options.buckets": buckets,
            "student.options.layers": layers,
            "student.options.ngram_orders": _orders(ngram_orders),
            "student.tokenizer": student_tokenizer,
            "tokenizer.max_len": max_len,
            **train_overrides(
                "student.train",
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                resume=resume,
                quiet=quiet,
            ),
        },
    )
    result = run_distill(cfg, open_corpus(cfg), out, max_len=max_len)
    m = result.meta
    dev = m["dev_metrics"]
    console.print(
        f"student saved to [bold]{result.path}[/]: {m['num_parameters']:,} parameters, "
        f"{m['size_mb']:.2f} MB, dev accuracy {dev.get('accuracy', float('nan')):.4f}, "
        f"macro-F1 {dev.get('macro_f1', float('nan')):.4f}"
    )


def _orders(value: str | None) -> list[int] | None:
    """``"2,3"`` -> ``[2, 3]``; ``"none"`` or ``""`` -> ``[]``; None stays unset."""
    if value is None:
        return None
    if value.strip().lower() in ("", "none"):
        return []
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise UserError(f"--ngram-orders: comma-separated integers, got {value!r}") from None
