"""Teacher and student models; all return :class:`ClassifierOutput`."""

from textdistill.models.output import ClassifierOutput

__all__ = ["ClassifierOutput"]
