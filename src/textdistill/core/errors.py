"""Exceptions for problems the user can fix; the CLI prints them without a traceback."""


class UserError(Exception):
    """Bad input, missing files, impossible option combinations."""


class DataError(UserError):
    """Invalid data files; the message lists every problem as ``file:line: what``."""

    def __init__(self, problems: list[str], total: int | None = None) -> None:
        self.problems = problems
        self.total = total if total is not None else len(problems)
        more = self.total - len(problems)
        msg = "\n".join(problems) + (f"\n... and {more} more problems" if more > 0 else "")
        super().__init__(msg)


class WriteError(UserError):
    """A write that failed (full disk, no permission, read-only file system); the message
    says what could not be written, what was kept, and how to go on."""


RESUME_HINT = "a training command continues from its last checkpoint with --resume"
