"""The one exception type for input the user can fix, and where their input is read; and the
stop of a training run by a signal (``TrainingInterrupted``).

``UserError``: a file, key, value or directory that the user gave cannot be used; its message names
it and says what to do. The ``nnpes`` command prints such an error on one line (exit code 2); every
other exception keeps its traceback, since it is a bug. ``ValueError``s of the library (``ConfigError``,
``DataError``, ``RunDirInUse``) are shown the same way. Library code raises ``UserError`` at the
boundary where the user's input is read (``reading``), never by catching broad types later.
"""

from __future__ import annotations

from contextlib import contextmanager


class UserError(Exception):
    """Input the user can fix: the message names the file or key and what to do."""


class TrainingDiverged(UserError, FloatingPointError):
    """The training loss became NaN or infinite (a learning rate too high, or bad labels)."""


class TrainingInterrupted(Exception):
    """Training stopped on a signal (``training.stopping``) after saving ``latest.ckpt``; the
    ``nnpes`` command exits with 128 + ``signum``, as a process killed by it would."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def reason(err: BaseException) -> str:
    """A short account of an I/O or parse error: ``strerror`` of an OSError, the problem and its
    line of a YAML error, else the first line of the message."""
    import yaml

    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"not valid YAML: {err.problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(err, yaml.YAMLError):
        return f"not valid YAML: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


@contextmanager
def reading(what: str):
    """Turn the I/O and format errors of reading the user's ``what`` (e.g. "config file x.yaml")
    into one ``UserError`` naming it: OSError (FileNotFoundError is kept), EOFError,
    UnicodeDecodeError and YAML errors. Other exceptions pass unchanged."""
    import yaml

    try:
        yield
    except FileNotFoundError:
        raise
    except (OSError, EOFError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{what}: cannot be read ({reason(e)})") from e
