"""Shared fixtures: the project root, the toy assets (built once if missing) and a script runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PRETRAIN = ROOT / "data" / "sample" / "pretrain.jsonl"


# Slow: a test that launches DeepSpeed or a training script, needs the pretrained toy model (which may
# take a pretraining run to build) or executes a notebook. `make test-fast` deselects them (-m "not slow").
SLOW_MODULES = {"test_notebooks", "test_finetune_script", "test_dpo_script", "test_grpo_script"}
SLOW_TESTS = {"test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run",
              "test_toy_deepspeed_launch_runs_two_processes_that_split_the_data"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.path.stem
        if (item.path.suffix == ".ipynb" or module in SLOW_MODULES or item.name in SLOW_TESTS
                or "toy_pretrained" in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def toy_dir() -> Path:
    """artifacts/toy as `make toy` builds it; built here when a test run starts without it."""
    from llmtrain.toy import ensure_toy_assets

    return ensure_toy_assets()


@pytest.fixture(scope="session")
def toy_tokenizer(toy_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(toy_dir)


def script_env(**extra: str) -> dict[str, str]:
    """The environment scripts run in: offline, the venv first on PATH, one thread per process."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run_script(args: list[str], timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """Run a command from the project root; stdout and stderr together in `.stdout`."""
    return subprocess.run(
        args, cwd=ROOT, env=script_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout,
    )


@pytest.fixture(scope="session")
def toy_pretrained(toy_dir) -> Path:
    """output/toy/pretrain as `make run` leaves it; pretrained once (DeepSpeed, 2 processes) when missing."""
    from llmtrain.toy import ensure_toy_pretrained

    return ensure_toy_pretrained()


@pytest.fixture(scope="session")
def toy_sft(toy_pretrained, tmp_path_factory) -> Path:
    """output/toy/sft as `make run` leaves it; else a short SFT of the toy model (DPO and GRPO need ChatML, not
    quality): 2 epochs of code/finetune.sh."""
    made = ROOT / "output" / "toy" / "sft"
    if (made / "model.safetensors").exists():
        return made
    out = tmp_path_factory.mktemp("sft") / "sft"
    result = run_script(["bash", "code/finetune.sh"], PRESET="toy", MODEL_DIR=str(toy_pretrained),
                        OUTPUT_DIR=str(out), EPOCHS="2", MASTER_PORT="29531")
    assert result.returncode == 0, result.stdout[-3000:]
    return out
