"""User-facing errors: each carries one clear sentence meant for a performer or the CLI.

Anything raised as a `UserError` is expected trouble with what was asked (a bad path, a bad value)
or with where it runs (a port taken, a package missing); the CLI prints its message without a
traceback, a bridge sends it to the client who asked. Anything else is a failure of ours - a bug -
and is reported as an internal error.
"""


class UserError(Exception):
    """Base class: a problem with what the user asked for, explained in one sentence."""


class SetupError(UserError):
    """This machine or its settings cannot do what was asked: a port taken, a device or a package
    missing, a setting that would expose the server."""


class CheckpointError(UserError):
    """A model could not be found, downloaded or loaded."""


class AudioInputError(UserError):
    """An audio file or buffer could not be read or used as a prompt."""


class CodesError(UserError):
    """Codec codes have the wrong shape, type or range."""


class ContextError(UserError):
    """A request does not fit in the model's context window."""
