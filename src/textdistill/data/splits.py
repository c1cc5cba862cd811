"""Which rows each stage trains, selects and reports on, and where it keeps its work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from textdistill.core.config import Config
from textdistill.core.errors import UserError
from textdistill.data.corpus import MIN_CLASSES, UNLABELED, Corpus, Split, stratified_subset


@dataclass
class TrainingData:
    """``train``: labelled training rows; ``select``: model-selection rows (early stopping);
    ``unlabeled_texts``: training texts whose labels are withheld (few-labels scenario);
    ``report``: splits to evaluate the final model on."""

    train: Split
    select: Split
    unlabeled_texts: list[str] = field(default_factory=list)
    report: dict[str, Split] = field(default_factory=dict)

    @property
    def dev(self) -> Split:
        return self.select


def prepare_training_data(cfg: Config, corpus: Corpus) -> TrainingData:
    """Apply ``data.holdout`` and ``data.train_limit`` deterministically (``data.seed``).

    Raises:
        UserError: the labelled training rows left cover fewer than two classes (the
            corpus checks the whole train split; a small holdout or train_limit subset of a
            rare class can still leave one).
    """
    d = cfg.data
    train = corpus.split(d.train_split)
    report = {
        name: split for name, split in corpus.splits.items() if name in (d.dev_split, d.test_split)
    }
    if d.holdout is not None:
        select, train = stratified_subset(train, d.holdout, d.seed)
        select = Split("holdout", select.texts, select.labels, select.path)
    else:
        select = corpus.split(d.dev_split)
    unlabeled: list[str] = []
    if d.train_limit is not None and d.train_limit < len(train):
        train, rest = stratified_subset(train, d.train_limit, d.seed)
        if d.unlabeled_rest:
            unlabeled = list(rest.texts)
    _check_classes(train, corpus, d.holdout, d.train_limit)
    return TrainingData(train=train, select=select, unlabeled_texts=unlabeled, report=report)


def _check_classes(
    train: Split, corpus: Corpus, holdout: int | None, train_limit: int | None
) -> None:
    present = sorted(set(train.labels) - {UNLABELED})
    if len(present) >= MIN_CLASSES:
        return
    where = train.path if train.path is not None else corpus.root
    found = f"only one class ({corpus.label_names[present[0]]})" if present else "no labelled rows"
    subsets = " and ".join(
        f"data.{key}={value}"
        for key, value in (("holdout", holdout), ("train_limit", train_limit))
        if value is not None
    )
    after = f" after {subsets}" if subsets else ""
    hint = "; raise data.train_limit or lower data.holdout" if subsets else ""
    raise UserError(
        f"{where}: {found} in the training rows{after}; a classifier needs rows of at least "
        f"{MIN_CLASSES} classes{hint}"
    )


def open_corpus(cfg: Config, also: Sequence[str] = ()) -> Corpus:
    """The configured data folder, or the built-in sample (fetched on first use).

    Reads the train split and the dev split (unless ``data.holdout`` replaces it), and,
    when their files exist, the test split, the pipeline's report splits and ``also``.
    """
    from textdistill.data.corpus import load_corpus
    from textdistill.data.sample import fetch_sample

    d = cfg.data
    root = Path(d.dir) if d.dir else fetch_sample()
    # With a holdout carved from train, the dev split only reports and may be absent.
    required = [d.train_split] if d.holdout is not None else [d.train_split, d.dev_split]
    # Every other split the config names is read when present (load_corpus reads only the
    # splits it is asked for).
    wanted = [d.dev_split, d.test_split, *cfg.pipeline.report_splits, *also]
    optional = [name for name in dict.fromkeys(wanted) if name not in required]
    return load_corpus(
        root,
        required=tuple(dict.fromkeys(required)),
        optional=optional,
        max_errors=d.max_errors,
        labels=d.labels,
    )
