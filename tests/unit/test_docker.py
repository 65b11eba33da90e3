"""The images install what we test: the CPU image's torch pin is the tested one, it installs the
package under constraints.txt, and build contexts leave local state out."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].split("+")[0]
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_cpu_image_pins_match_the_tested_versions():
    dockerfile = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    instructions = [line.split()[0] for line in dockerfile.splitlines() if line and not line[0].isspace()
                    and not line.startswith("#")]
    assert instructions[0] == "FROM" and "ENTRYPOINT" in instructions
    (torch,) = re.findall(r"torch==([\d.]+)", dockerfile)
    assert torch == pinned("torch")
    assert re.search(r"download\.pytorch\.org/whl/cpu", dockerfile)  # never a CUDA build on CPU
    assert "-c constraints.txt" in dockerfile
    torch_range = re.search(r'"torch([^"]*)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert torch_range.endswith(f"<={torch}")


def test_build_context_leaves_local_state_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv/", "runs/", ".git/", ".torch_extensions/"} <= set(ignored)
