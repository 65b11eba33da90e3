"""The images install what we test: the CPU image's torch pin is the tested one, it installs the
package under constraints.txt; the CUDA image stands on the Ray of constraints.txt, installs the
`gpu` extra and DeepSpeed at their pins and leaves torch to vLLM; build contexts leave local state out."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].split("+")[0]
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile line that starts one (not comments, continuations)."""
    return [(line.split()[0], line.partition(" ")[2]) for line in dockerfile.splitlines()
            if line and not line[0].isspace() and not line.startswith("#")]


def test_cpu_image_pins_match_the_tested_versions():
    dockerfile = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    names = [name for name, _ in instructions(dockerfile)]
    assert names[0] == "FROM" and "ENTRYPOINT" in names
    (torch,) = re.findall(r"torch==([\d.]+)", dockerfile)
    assert torch == pinned("torch")
    assert re.search(r"download\.pytorch\.org/whl/cpu", dockerfile)  # never a CUDA build on CPU
    assert "-c constraints.txt" in dockerfile
    torch_range = re.search(r'"torch([^"]*)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert torch_range.endswith(f"<={torch}")


def test_cuda_image_stands_on_the_tested_ray_and_leaves_torch_to_vllm():
    dockerfile = (ROOT / "docker" / "Dockerfile.cuda").read_text()
    steps = instructions(dockerfile)
    assert steps[0][0] == "FROM" and steps[-1] == ("ENTRYPOINT", '["mmc-ray"]')
    assert all(name.isupper() for name, _ in steps)
    base = re.fullmatch(r"rayproject/ray:([\d.]+)-py(\d+)-cu(\d+)", steps[0][1].strip())
    assert base, steps[0][1]
    assert base.group(1) == pinned("ray")
    assert '".[gpu]"' in dockerfile and "-c /tmp/constraints-cuda.txt" in dockerfile
    filtered = re.search(r"grep -v -E '\^\(([\w|]+)\)==' constraints\.txt > /tmp/constraints-cuda\.txt",
                         dockerfile)
    assert filtered and "torch" in filtered.group(1).split("|")  # vLLM brings its CUDA torch
    assert "deepspeed" not in filtered.group(1) and "ray" not in filtered.group(1).split("|")
    for name, version in re.findall(r"\b(deepspeed)==([\d.]+)", dockerfile):
        assert version == pinned(name)
    code = "\n".join(line for line in dockerfile.splitlines() if not line.startswith("#"))
    assert not re.search(r"download\.pytorch\.org/whl/cpu|torch==", code)  # never our CPU torch
    flash = re.search(r"ARG WITH_FLASH_ATTN=(\d)", dockerfile)
    assert flash and flash.group(1) == "0"  # optional, off by default


def test_build_context_leaves_local_state_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv/", "runs/", ".git/", ".torch_extensions/"} <= set(ignored)
