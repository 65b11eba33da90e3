"""Work on a background thread whose outcome is never lost: `join()` returns its result or re-raises
what it raised, and `on_exit` hears how it ended before anyone waiting does."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class BackgroundTask:
    """Starts `work()` on a daemon thread named `name` at once."""

    def __init__(self, name: str, work: Callable[[], Any],
                 on_exit: Callable[[BaseException | None], None] | None = None) -> None:
        self.name = name
        self.result: Any = None
        self.error: BaseException | None = None
        self._on_exit = on_exit
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self.result = work()
        except BaseException as e:  # kept for join(), which re-raises it in the caller's thread
            self.error = e
        finally:
            if self._on_exit is not None:
                self._on_exit(self.error)

    def wait(self) -> None:
        self._thread.join()

    def join(self) -> Any:
        self.wait()
        if self.error is not None:
            raise self.error
        return self.result
