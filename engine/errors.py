"""User-facing errors: each carries one clear sentence meant for a performer or the CLI.

Anything raised as an `EngineError` is expected input trouble (a bad path, a bad value); the CLI
prints its message without a traceback. Anything else is a bug.
"""


class EngineError(Exception):
    """Base class: a problem with what the user asked for, explained in one sentence."""


class CheckpointError(EngineError):
    """A model could not be found, downloaded or loaded."""


class AudioInputError(EngineError):
    """An audio file or buffer could not be read or used as a prompt."""


class CodesError(EngineError):
    """Codec codes have the wrong shape, type or range."""


class ContextError(EngineError):
    """A request does not fit in the model's context window."""
