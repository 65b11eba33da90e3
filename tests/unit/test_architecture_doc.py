"""docs/architecture.md's unit table says what the layering test enforces: the same units, each
allowed the same imports."""


from test_layering import MAY_IMPORT, PACKAGE

DOC = PACKAGE.parent / "docs" / "architecture.md"


def documented_units() -> dict[str, set[str]]:
    """unit → may import, from the table under "## Units"."""
    section = DOC.read_text().split("## Units", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            table[cells[0].strip("`")] = set() if cells[3] == "—" else {u.strip() for u in cells[3].split(",")}
    return table


def test_the_architecture_page_matches_the_layering_test():
    assert documented_units() == MAY_IMPORT


def test_the_page_names_every_module_it_points_at():
    for path in ("config/engine_kinds.py", "orchestration/flywheel.py", "orchestration/streaming.py",
                 "train/pretrain_tiny.py", "mcts/pairs.py", "stages/search.py", "stages/annotate.py"):
        assert (PACKAGE / path).is_file(), path
        assert path in DOC.read_text()
