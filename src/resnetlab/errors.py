"""One exception family: the CLI prints its message as one line and exits with its code."""


class ResnetlabError(RuntimeError):
    """A failure a user can act on; the message says what was wrong and what to do."""

    exit_code = 1


class UsageError(ResnetlabError, ValueError):
    """Bad arguments: unknown names, impossible sizes, conflicting flags (exit status 2)."""

    exit_code = 2


class DataError(ResnetlabError, ValueError):
    """A dataset that is missing, truncated, corrupted or of the wrong format, or no longer the
    data a run recorded (data/identity.py: a resume or `eval` of it would not be that run's)."""


class CheckpointError(ResnetlabError, ValueError):
    """A checkpoint or weights file that is missing, truncated or foreign."""


class ExportError(ResnetlabError):
    """An export that failed or did not match PyTorch's outputs; nothing was written."""


class TrainingError(ResnetlabError):
    """A run that failed: a non-finite loss, out of memory."""


class WriteError(ResnetlabError, OSError):
    """A file that could not be written (no space, a read-only folder, a removed folder); the
    previous version of the file is left intact (resnetlab.fileio writes atomically)."""

    def __init__(self, message: str, errno: int | None = None, filename: str | None = None) -> None:
        super().__init__(message)
        self.errno, self.filename = errno, filename

    def __str__(self) -> str:  # the message, not OSError's "[Errno N] ..." form
        return str(self.args[0])

    @classmethod
    def of(cls, error: OSError, path) -> "WriteError":
        if isinstance(error, WriteError):
            return error
        cause = error.strerror or str(error) or type(error).__name__
        return cls(
            f"cannot write {path}: {cause}; the previous file there is intact",
            error.errno,
            str(path),
        )


class Interrupted(ResnetlabError):
    """Ctrl-C during training: the checkpoint is written and the message says how to resume."""

    exit_code = 130


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def plural(count: int, word: str, many: str | None = None) -> str:
    """`word` as it goes after the number `count`: plural(1, "epoch") is "epoch", plural(2,
    "process", "processes") "processes"."""
    return word if count == 1 else (many or word + "s")
