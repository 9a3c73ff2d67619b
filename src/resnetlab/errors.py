"""One exception family: the CLI prints its message as one line and exits with its code."""


class ResnetlabError(RuntimeError):
    """A failure a user can act on; the message says what was wrong and what to do."""

    exit_code = 1


class UsageError(ResnetlabError, ValueError):
    """Bad arguments: unknown names, impossible sizes, conflicting flags (exit status 2)."""

    exit_code = 2


class DataError(ResnetlabError, ValueError):
    """A dataset that is missing, truncated, corrupted or of the wrong format."""


class CheckpointError(ResnetlabError, ValueError):
    """A checkpoint or weights file that is missing, truncated or foreign."""


class ExportError(ResnetlabError):
    """An export that failed or did not match PyTorch's outputs; nothing was written."""


class TrainingError(ResnetlabError):
    """A run that failed: a non-finite loss, out of memory."""


class Interrupted(ResnetlabError):
    """Ctrl-C during training: the checkpoint is written and the message says how to resume."""

    exit_code = 130
