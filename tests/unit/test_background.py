"""A background task's outcome is never lost: its result or its error reaches `join`, and `on_exit`
hears how it ended first."""

import threading

import pytest

from mmc_ray.background import BackgroundTask


def test_join_returns_the_result_and_on_exit_hears_success():
    heard = []
    task = BackgroundTask("ok", lambda: 42, on_exit=heard.append)
    assert task.join() == 42 and heard == [None] and task.error is None


def test_join_reraises_the_error_after_on_exit_heard_it():
    heard: list[BaseException | None] = []
    release = threading.Event()

    def work():
        release.wait(5)
        raise KeyError("lost shard")

    task = BackgroundTask("failing", work, on_exit=heard.append)
    assert heard == []  # still running
    release.set()
    task.wait()
    assert isinstance(heard[0], KeyError) and task.error is heard[0]
    with pytest.raises(KeyError, match="lost shard"):
        task.join()
