"""Teacher sources for distillation: what ``distill.teachers`` may name.

Today: teacher and student folders, exports, and ensemble folders, which expand to their
members with the folder's weights and rule (:func:`expand_teachers`).
"""

from __future__ import annotations

from textdistill.core.config import Config, apply_overrides
from textdistill.core.errors import UserError
from textdistill.models.ensemble import is_ensemble, read_ensemble


def expand_teachers(cfg: Config) -> Config:
    """``cfg`` with an ensemble folder in ``distill.teachers`` replaced by its members, and
    ``distill.teacher_weights`` / ``distill.ensemble`` taken from the folder.

    The result is the same config as listing the members by hand, so both share one
    soft-target cache.

    Raises:
        UserError: an ensemble folder next to other teachers, or together with
            ``distill.teacher_weights`` (the folder carries its own).
    """
    teachers = cfg.distill.teachers
    if not any(is_ensemble(t) for t in teachers):
        return cfg
    if len(teachers) > 1:
        raise UserError(
            "an ensemble folder must be the only --teacher; to combine it with other "
            "models, list all the members as teachers (or make a new ensemble)"
        )
    if cfg.distill.teacher_weights is not None:
        raise UserError(f"{teachers[0]} is an ensemble with its own weights; drop --teacher-weight")
    spec = read_ensemble(teachers[0])
    return apply_overrides(
        cfg,
        {
            "distill.teachers": [str(m) for m in spec.members],
            "distill.teacher_weights": spec.weights,
            "distill.ensemble": spec.combine,
        },
    )
