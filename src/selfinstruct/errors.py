"""Typed errors. The CLI turns each into one line and an exit code; library users catch them.

    SelfInstructError                 exit 1   anything this package raises on purpose
    ├── ConfigError                   exit 2   a bad option or configuration value
    │   └── RunIdentityError          exit 2   a rerun with other data-changing settings
    │                                          (in identity.py: it carries the differences)
    ├── SeedFileError                 exit 2   a seed file: names file, line and field
    ├── DataFileError                 exit 2   a pipeline file malformed beyond a torn last line
    ├── MissingExtraError             exit 2   an optional dependency group is not installed
    ├── ModelError                    exit 3   retrying cannot help: bad key, unknown model, ...
    │   └── ModelUnreachable          exit 3   no answer at all (one of several may come back)
    ├── TransientModelError           (retried by the engine, never reaches the CLI)
    ├── BudgetExhausted               exit 4   --max-requests / --max-tokens-total reached
    ├── RunLockedError                exit 5   another process is using the run folder
    └── HubError                      exit 6   the Hugging Face Hub refused an upload

An interrupted command exits 130 (Ctrl-C) or 143 (SIGTERM). Whatever the error, what was
accepted before it stays on disk and a rerun of the same command resumes.

A message names the settings it is about by their Python names in backticks (`max_length`,
`similarity_threshold`): what a library user passes. The command line shows each as its flag
(`--max-length`): `cli.for_the_command_line`.
"""

from __future__ import annotations

import re

_SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")


class SelfInstructError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1

    @property
    def settings(self) -> list[str]:
        """The settings the message names, in order (empty when it is about no setting)."""
        return _SETTING.findall(str(self))


class ConfigError(SelfInstructError):
    """A bad option or configuration value."""

    exit_code = 2


class SeedFileError(SelfInstructError):
    """A seed-task file that cannot be used; the message names file, line and field."""

    exit_code = 2


class DataFileError(SelfInstructError):
    """A pipeline file (JSONL) that is malformed beyond a torn last line."""

    exit_code = 2


class ModelError(SelfInstructError):
    """A model call failed in a way retrying cannot fix (bad key, unknown model, bad request)."""

    exit_code = 3


class ModelUnreachable(ModelError):
    """A model's server does not answer at all (not running, wrong address). Alone it stops
    the run; one member of several is left out and probed again later."""


class TransientModelError(SelfInstructError):
    """A model call failed in a way that retrying may fix (timeout, 429, 5xx, malformed answer)."""

    def __init__(self, message: str, *, reason: str, retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after

    def __reduce__(self) -> tuple:
        # Picklable with its reason: a Ray replica raises it in another process.
        return (_transient, (type(self), str(self), self.reason, self.retry_after))


def _transient(
    cls: type[TransientModelError], message: str, reason: str, retry_after: float | None
) -> TransientModelError:
    return cls(message, reason=reason, retry_after=retry_after)


class BudgetExhausted(SelfInstructError):
    """A --max-requests or --max-tokens-total budget was reached; the run stopped cleanly."""

    exit_code = 4


class MissingExtraError(SelfInstructError):
    """An optional dependency group is not installed; the message says what to install."""

    exit_code = 2


class RunLockedError(SelfInstructError):
    """Another process is using the run folder; the message names the folder and its pid."""

    exit_code = 5


class HubError(SelfInstructError):
    """The Hugging Face Hub refused a request (bad token, no access, ...): the message says why."""

    exit_code = 6
