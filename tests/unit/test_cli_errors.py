"""What the user can fix is one line and exit 2; a bug keeps its traceback."""

import pytest

from mmc_ray import cli
from mmc_ray.errors import BadInput, MissingInput, NotEnoughResources, UserError


def run_with(monkeypatch, error: BaseException, *flags: str) -> int:
    def command(args):
        raise error

    monkeypatch.setitem(cli.COMMANDS, ("tasks", "generate"), command)
    return cli.main([*flags, "tasks", "generate", "--out", "unused.parquet"])


@pytest.mark.parametrize("error", [MissingInput("no model at x"), BadInput("bad row"),
                                   NotEnoughResources("needs 4 CPU"), UserError("fix this")])
def test_user_errors_are_one_line_and_exit_2(monkeypatch, capsys, error):
    assert run_with(monkeypatch, error) == 2
    err = capsys.readouterr().err
    assert err == f"mmc-ray tasks: error: {error}\n"


def test_a_user_error_a_stage_wrapped_is_still_one_line(monkeypatch, capsys):
    try:
        raise MissingInput("no model at runs/tiny-vlm (train.init_model)")
    except MissingInput as e:
        try:
            raise RuntimeError("streamed round: training failed") from e
        except RuntimeError as wrapped:
            error = wrapped
    assert run_with(monkeypatch, error) == 2
    assert capsys.readouterr().err == "mmc-ray tasks: error: no model at runs/tiny-vlm (train.init_model)\n"


def test_lost_capacity_is_one_line_and_exit_3_also_through_the_stage_that_wrapped_it(monkeypatch, capsys):
    from mmc_ray.workers.dispatch import CapacityLost

    lost = CapacityLost("a batch lost its worker 4 times")
    wrapped = RuntimeError("streamed round: search failed")
    wrapped.__cause__ = lost
    for error in (lost, wrapped):
        assert run_with(monkeypatch, error) == 3
        err = capsys.readouterr().err
        assert err.startswith("mmc-ray tasks: stopped: a batch lost its worker 4 times. Finished work is kept")
        assert err.count("\n") == 1


def test_verbose_adds_the_traceback(monkeypatch, capsys):
    assert run_with(monkeypatch, MissingInput("no model at x"), "-v") == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith("mmc-ray tasks: error: no model at x\n")


@pytest.mark.parametrize("error", [RuntimeError("a bug"), ValueError("a bug"), KeyError("a bug")])
def test_anything_else_keeps_its_traceback(monkeypatch, error):
    with pytest.raises(type(error)):
        run_with(monkeypatch, error)


def test_user_errors_are_still_the_builtins_callers_catch():
    assert issubclass(MissingInput, FileNotFoundError) and issubclass(BadInput, ValueError)
    assert issubclass(NotEnoughResources, RuntimeError)
