"""Errors the user can fix, told apart from bugs.

`mmc-ray` prints a `UserError` as one line naming what to change and exits 2, and a
`CapacityFailure` (the cluster lost what the run needs) as one line and exits 3, also when a stage
that failed for it was wrapped by the stage around it; any other exception is a bug and keeps its
traceback. `-v` shows the traceback always. Each kind also subclasses the builtin it replaces, so
callers that catch `FileNotFoundError` or `ValueError` keep working.
"""


class UserError(Exception):
    """Something the user can fix: a config value, an input path, the size of the cluster."""


class MissingInput(UserError, FileNotFoundError):
    """A file, folder or model the command needs is not there."""


class BadInput(UserError, ValueError):
    """An input file or value is malformed or contradicts itself."""


class NotEnoughResources(UserError, RuntimeError):
    """The Ray cluster cannot hold what the config asks for."""


class CapacityFailure(RuntimeError):
    """Infrastructure, not input: workers dead past their restarts, a node gone. Finished work is
    kept; rerunning the command (once the cluster is whole) goes on from there."""


def root_cause(error: BaseException) -> UserError | CapacityFailure | None:
    """The `UserError` or `CapacityFailure` that `error` is, or that its chain of causes holds."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError | CapacityFailure):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
