"""Errors the user can fix, told apart from bugs.

`mmc-ray` prints a `UserError` as one line naming what to change and exits 2; any other exception
is a bug (or an infrastructure failure) and keeps its traceback. `-v` shows the traceback always.
Each kind also subclasses the builtin it replaces, so callers that catch `FileNotFoundError` or
`ValueError` keep working.
"""


class UserError(Exception):
    """Something the user can fix: a config value, an input path, the size of the cluster."""


class MissingInput(UserError, FileNotFoundError):
    """A file, folder or model the command needs is not there."""


class BadInput(UserError, ValueError):
    """An input file or value is malformed or contradicts itself."""


class NotEnoughResources(UserError, RuntimeError):
    """The Ray cluster cannot hold what the config asks for."""
