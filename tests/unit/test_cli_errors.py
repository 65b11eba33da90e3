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
