"""``textdistill teacher ...``: train a teacher and cache its soft targets."""

from __future__ import annotations

from pathlib import Path

import typer

from textdistill.cli.common import (
    BatchOpt,
    ConfigOpt,
    DataOpt,
    EpochsOpt,
    LrOpt,
    MaxLenOpt,
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    VerboseOpt,
    console,
    resolve_config,
    setup_logging,
    train_overrides,
    user_errors,
)

app = typer.Typer(help="Train a teacher and cache its soft targets.", no_args_is_help=True)


@app.command("train")
@user_errors
def train(
    out: Path = typer.Option(..., "--out", "-o", help="Teacher folder to write."),
    data: Path | None = DataOpt,
    model: str | None = typer.Option(
        None, "--model", help="Hugging Face checkpoint (hub id or folder) to fine-tune."
    ),
    scratch: str | None = typer.Option(
        None, "--scratch", help="Train a BERT from scratch: tiny, mini, small, base or custom."
    ),
    layers: int | None = typer.Option(None, "--layers", help="Scratch: layers."),
    hidden: int | None = typer.Option(None, "--hidden", help="Scratch: hidden size."),
    heads: int | None = typer.Option(None, "--heads", help="Scratch: attention heads."),
    mlm_epochs: int | None = typer.Option(
        None, "--mlm-epochs", help="Masked-LM domain pretraining epochs before fine-tuning."
    ),
    unlabeled: list[Path] | None = typer.Option(
        None, "--unlabeled", help="Extra texts (one per line) for MLM pretraining."
    ),
    epochs: int | None = EpochsOpt,
    batch_size: int | None = BatchOpt,
    lr: float | None = LrOpt,
    seed: int | None = SeedOpt,
    max_len: int | None = MaxLenOpt,
    resume: bool = ResumeOpt,
    quiet: bool = QuietOpt,
    config: Path | None = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Fine-tune a checkpoint (--model) or train a BERT from scratch (--scratch PRESET)."""
    from textdistill.data.splits import open_corpus
    from textdistill.distill.teacher_train import train_teacher

    setup_logging(verbose)
    cfg = resolve_config(
        config,
        {
            "data.dir": str(data) if data else None,
            "teacher.model": model,
            "teacher.scratch": scratch,
            "teacher.layers": layers,
            "teacher.hidden": hidden,
            "teacher.heads": heads,
            "teacher.mlm.epochs": mlm_epochs,
            "teacher.unlabeled": [str(u) for u in unlabeled] if unlabeled else None,
            "tokenizer.max_len": max_len,
            **train_overrides(
                "teacher.train",
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                resume=resume,
                quiet=quiet,
            ),
            # MLM shares the run's seed, resume and progress settings.
            "teacher.mlm.seed": seed,
            "teacher.mlm.resume": True if resume else None,
            "teacher.mlm.progress": False if quiet else None,
        },
    )
    result = train_teacher(cfg, open_corpus(cfg), out)
    m = result.meta
    console.print(
        f"teacher saved to [bold]{result.path}[/]: {m['num_parameters']:,} parameters, "
        f"{m['size_mb']:.1f} MB, dev {_fmt(m['dev_metrics'])}"
    )


@app.command("cache")
@user_errors
def cache(
    teacher: list[Path] = typer.Option(
        ...,
        "--teacher",
        "-t",
        help="Teacher folder (repeat for an ensemble, or give an ensemble folder).",
    ),
    data: Path | None = DataOpt,
    split: str = typer.Option("train", "--split", help="Split whose texts form the transfer set."),
    extra: list[Path] | None = typer.Option(
        None, "--extra", help="Unlabeled texts (one per line) added to the transfer set."
    ),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Where to store the cache."),
    batch_size: int = typer.Option(256, "--batch-size", help="Inference batch size."),
    no_pooled: bool = typer.Option(False, "--no-pooled", help="Skip pooled vectors."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild even when valid."),
    quiet: bool = QuietOpt,
    config: Path | None = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Run the teacher(s) once over the transfer set and cache logits and pooled vectors."""
    from textdistill.data.corpus import read_texts
    from textdistill.data.splits import open_corpus
    from textdistill.distill.cache import build_soft_targets
    from textdistill.distill.teachers import expand_teachers

    setup_logging(verbose)
    cfg = resolve_config(
        config,
        {"data.dir": str(data) if data else None, "distill.teachers": [str(t) for t in teacher]},
    )
    cfg = expand_teachers(cfg)
    corpus = open_corpus(cfg)
    texts = list(corpus.split(split).texts)
    for f in extra or []:
        texts += read_texts(f)
    targets = build_soft_targets(
        cfg.distill.teachers,
        texts,
        cache_dir=cache_dir,
        weights=cfg.distill.teacher_weights,
        ensemble=cfg.distill.ensemble,
        with_pooled=not no_pooled,
        batch_size=batch_size,
        rebuild=rebuild,
        progress=not quiet,
    )
    pooled = "no pooled vectors" if targets.pooled is None else f"pooled {targets.pooled.shape}"
    console.print(
        f"soft targets for {len(targets):,} rows at [bold]{targets.path}[/] "
        f"(logits {targets.logits.shape}, {pooled})"
    )


def _fmt(metrics: dict[str, float]) -> str:
    keys = ("accuracy", "macro_f1")
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics) or "-"
