"""The import layers of DESIGN.md hold (import-linter, configured in pyproject.toml), and the check is live:
an upward import, a module circle and a torch import in config/, each planted in a copy of the package, fail
it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def test_layers_hold():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


PLANTS = {
    "upward": ("megatron_align/config/_planted.py", "from megatron_align.algorithms import sft\n",
               "megatron_align.config is not allowed to import megatron_align.algorithms"),
    "circle": ("megatron_align/losses/_planted.py", "import megatron_align.losses.reward\n",
               "No cycles are allowed in megatron_align.losses"),
    "torch_in_config": ("megatron_align/config/_planted.py", "def f():\n    import torch\n",
                        "megatron_align.config is not allowed to import torch"),
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_planted_violation_breaks_the_check(tmp_path, plant):
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "megatron_align", tmp_path / "megatron_align", ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path, code, message = PLANTS[plant]
    (tmp_path / path).write_text(code)
    if plant == "circle":  # the reward losses import the planted module back
        reward = tmp_path / "megatron_align/losses/reward.py"
        reward.write_text(reward.read_text() + "\nfrom megatron_align.losses import _planted  # noqa\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0 and message in " ".join(proc.stdout.split()), proc.stdout[-3000:]
