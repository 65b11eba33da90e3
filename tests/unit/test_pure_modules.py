"""The pure cores must stay importable without torch or Ray, so they are trivial to test and use."""

import subprocess
import sys

import pytest

PURE_MODULES = [
    "mmc_ray.config",
    "mmc_ray.schemas",
    "mmc_ray.tasks.solution",
    "mmc_ray.tasks.problem",
    "mmc_ray.tasks.prompts",
    "mmc_ray.tasks.scoring",
    "mmc_ray.tasks.benchmark",
    "mmc_ray.tasks.synthetic",
    "mmc_ray.mcts.tree",
    "mmc_ray.mcts.pairs",
    "mmc_ray.critique.schema",
    "mmc_ray.critique.prompts",
    "mmc_ray.critique.rule_annotator",
    "mmc_ray.critique.mc_annotator",
    "mmc_ray.critique.step_scores",
    "mmc_ray.seeding",
    "mmc_ray.images",
    "mmc_ray.serve.protocol",
    "mmc_ray.serve.llm",
    "mmc_ray.engine_protocol",
    "mmc_ray.store.layout",
    "mmc_ray.store.dataset",
    "mmc_ray.engines.factory",
    "mmc_ray.engines.simulated",
    "mmc_ray.engines.rule_critic",
    "mmc_ray.engines.vllm",
    "mmc_ray.refine.loop",
    "mmc_ray.refine.run",
    "mmc_ray.eval.metrics",
    "mmc_ray.eval.processbench",
    "mmc_ray.eval.best_of_n",
    "mmc_ray.eval.report",
    "mmc_ray.cli",
]


@pytest.mark.parametrize("module", PURE_MODULES)
def test_module_imports_neither_torch_nor_ray(module):
    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'ray', 'transformers', 'vllm', "
            f"'deepspeed') if m in sys.modules]; assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
