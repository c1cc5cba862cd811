"""``textdistill teacher ...``: train or import a teacher and cache its soft targets."""

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

app = typer.Typer(
    help="Train or import a teacher and cache its soft targets.", no_args_is_help=True
)


@app.command("train")
@user_errors
def train(
    out: Path = typer.Option(..., "--out", "-o", help="Teacher folder to write."),
    data: Path | None = DataOpt,
    labels: Path | None = LabelsOpt,
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
            **data_overrides(data, labels),
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


@app.command("import")
@user_errors
def import_(
    source: str | None = typer.Argument(
        None, help="Hugging Face classification folder or hub id (with --state-dict: the base)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Teacher folder to write."),
    data: Path | None = DataOpt,
    labels: Path | None = LabelsOpt,
    state_dict: Path | None = typer.Option(
        None, "--state-dict", help="A BertModel + Linear state dict (bert.*, fc.*) to load."
    ),
    base: str | None = typer.Option(
        None, "--base", help="With --state-dict: the checkpoint whose architecture it fits."
    ),
    label_map: Path | None = LabelMapOpt,
    max_len: int | None = MaxLenOpt,
    config: Path | None = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Make a teacher folder from a classifier trained elsewhere, evaluated on the data.

    Its classes are matched to the data's class.txt by name (a state dict's are the data's,
    in class.txt order); the folder then works with every command, like a trained teacher.
    """
    from textdistill.data.splits import open_corpus
    from textdistill.distill.teachers import import_teacher, read_label_map

    setup_logging(verbose)
    if state_dict is not None and base is None and source is None:
        raise typer.BadParameter("--state-dict needs --base CHECKPOINT (or a SOURCE)")
    cfg = resolve_config(config, {**data_overrides(data, labels), "tokenizer.max_len": max_len})
    meta = import_teacher(
        base or source,
        out,
        cfg,
        open_corpus(cfg),
        label_map=read_label_map(label_map) if label_map else None,
        state_dict=state_dict,
    )
    console.print(
        f"teacher saved to [bold]{out}[/]: {meta['num_parameters']:,} parameters, "
        f"{meta['size_mb']:.1f} MB, dev {_fmt(meta['dev_metrics'])}"
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
    labels: Path | None = LabelsOpt,
    split: str | None = typer.Option(
        None,
        "--split",
        help="Cache this split's texts instead of the distillation transfer set.",
    ),
    extra: list[Path] | None = typer.Option(
        None, "--extra", help="Unlabeled texts (one per line) added to the transfer set."
    ),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Where to store the cache."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Inference batch size (default distill.cache_batch_size)."
    ),
    no_pooled: bool = typer.Option(False, "--no-pooled", help="Skip pooled vectors."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild even when valid."),
    label_map: Path | None = LabelMapOpt,
    quiet: bool = QuietOpt,
    config: Path | None = ConfigOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Run the teacher(s) once over the transfer set and cache logits and pooled vectors.

    The transfer set is the one ``distill`` builds from the same config and flags (training
    rows, unlabeled and --extra texts, augmented copies), so a later ``distill`` with any
    teacher mode finds this cache instead of running the teacher again.
    """
    from textdistill.data.corpus import read_texts
    from textdistill.data.splits import open_corpus, prepare_training_data
    from textdistill.distill.cache import build_soft_targets
    from textdistill.distill.run import transfer_set
    from textdistill.distill.teachers import expand_teachers

    setup_logging(verbose)
    cfg = resolve_config(
        config,
        {
            **data_overrides(data, labels),
            "distill.teachers": [str(t) for t in teacher],
            "distill.extra": [str(f) for f in extra] if extra else None,
            "distill.cache_batch_size": batch_size,
            "distill.label_map": str(label_map) if label_map else None,
        },
    )
    corpus = open_corpus(cfg)
    cfg = expand_teachers(cfg, corpus)
    if split is not None:
        texts = list(corpus.split(split).texts)
        for f in cfg.distill.extra:
            texts += read_texts(f)
    else:
        texts = transfer_set(cfg, prepare_training_data(cfg, corpus)).texts
    targets = build_soft_targets(
        cfg.distill.teachers,
        texts,
        cache_dir=cache_dir,
        weights=cfg.distill.teacher_weights,
        ensemble=cfg.distill.ensemble,
        with_pooled=not no_pooled,
        batch_size=cfg.distill.cache_batch_size,
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
