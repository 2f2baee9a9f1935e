"""Errors the command line reports as one line (no traceback): a user's mistake is a
ValueError (exit 2); a run that had to stop is one of these (exit 1)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint written is kept."""
