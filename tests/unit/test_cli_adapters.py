"""`mmc-ray adapters`: its flags become one registry change, and it lists the result (the change itself
runs on a real Ray Serve in tests/ray/test_serve.py)."""

from mmc_ray import cli, ray_runtime
from mmc_ray.serve import checkpoints
from mmc_ray.serve.adapter_state import ServedAdapters


def test_flags_become_one_change_and_the_result_is_listed(monkeypatch, capsys):
    calls = []

    def change(app, load, aliases, unload):
        calls.append((app, load, aliases, unload))
        return ServedAdapters({"critic-r3": "/runs/r3/adapter"}, {"critic": "critic-r3"})

    monkeypatch.setattr(checkpoints, "change_adapters", change)
    monkeypatch.setattr(ray_runtime, "init_ray", lambda *a, **k: None)
    assert cli.main(["adapters", "--load", "critic-r3=/runs/r3/adapter", "--alias", "critic=critic-r3",
                     "--unload", "critic-r2"]) == 0
    assert calls == [("mmc-critic", {"critic-r3": "/runs/r3/adapter"}, {"critic": "critic-r3"}, ["critic-r2"])]
    out = capsys.readouterr().out
    assert "critic-r3\t/runs/r3/adapter\t(alias: critic)" in out and "every replica follows" in out


def test_a_malformed_flag_is_one_line_and_exit_2(capsys):
    assert cli.main(["adapters", "--alias", "critic"]) == 2
    assert "expected ALIAS=NAME" in capsys.readouterr().err
