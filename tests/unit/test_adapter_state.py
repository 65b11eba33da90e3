"""The rules of swapping a served app's LoRA adapters: versions, aliases, unloads, requests in flight."""

import threading

import pytest

from mmc_ray.errors import BadInput
from mmc_ray.serve.adapter_state import ServedAdapters, ServedNames
from mmc_ray.serve.protocol import ModelNotFound

R1 = ServedAdapters({"critic-r1": "/a/r1"}, {"critic": "critic-r1"})


def test_a_round_is_swapped_by_load_alias_unload_in_one_change():
    after = R1.changed(load={"critic-r2": "/a/r2"}, aliases={"critic": "critic-r2"}, unload=["critic-r1"])
    assert after == ServedAdapters({"critic-r2": "/a/r2"}, {"critic": "critic-r2"})
    assert R1.paths == {"critic-r1": "/a/r1"}  # the record is a value: the old one is untouched


@pytest.mark.parametrize(("change", "reason"), [
    ({"load": {"critic-r1": "/a/other"}}, "immutable"),
    ({"load": {"critic": "/a/r2"}}, "is an alias"),
    ({"aliases": {"critic-r1": "critic-r1"}}, "is an adapter version"),
    ({"aliases": {"critic": "critic-r9"}}, "no such adapter"),
    ({"unload": ["critic-r1"]}, "alias critic points at it"),
    ({"unload": ["critic-r7"]}, "not loaded"),
    ({"load": {"bad name": "/a/x"}}, "adapter name"),
])
def test_a_change_that_would_break_requests_is_refused_whole(change, reason):
    with pytest.raises(BadInput, match=reason):
        R1.changed(**change)


def test_reloading_the_same_version_from_the_same_folder_changes_nothing():
    assert R1.changed(load={"critic-r1": "/a/r1"}) == R1


def test_the_default_adapter_is_never_unloaded_and_an_alias_can_be_dropped():
    served = ServedAdapters({"critic-r1": "/a/r1"}, {"critic": "critic-r1"}, default="critic-r1")
    dropped = served.changed(unload=["critic"])
    assert dropped.aliases == {} and dropped.paths == served.paths
    with pytest.raises(BadInput, match="default adapter"):
        dropped.changed(unload=["critic-r1"])


def test_a_request_resolves_an_alias_and_holds_its_version_until_done():
    names = ServedNames()
    names.follow(["critic-r1", "critic-r2"], {"critic": "critic-r1", "ghost": "critic-r9"})
    assert names.names() == ["critic-r1", "critic-r2", "critic"]  # an alias to a version not held is left out
    with names.holding("critic", "mmc-critic") as version:
        assert version == "critic-r1"
        names.follow(["critic-r1", "critic-r2"], {"critic": "critic-r2"})  # the alias moves meanwhile
        assert not names.retire("critic-r1")  # held by the request in flight
    assert names.retire("critic-r1")
    assert names.names() == ["critic-r2", "critic"]
    with pytest.raises(ModelNotFound), names.holding("critic-r1", "mmc-critic"):
        pass
    with names.holding(None, "mmc-critic") as default, names.holding("mmc-critic", "mmc-critic") as base:
        assert default is None and base is None
    assert not names.retire("critic-r2")  # an alias points at it


def test_holds_from_many_threads_all_release():
    names = ServedNames()
    names.follow(["v1"], {})
    go = threading.Barrier(8)

    def request() -> None:
        go.wait()
        for _ in range(200):
            with names.holding("v1", "base"):
                pass

    threads = [threading.Thread(target=request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert names.retire("v1")
