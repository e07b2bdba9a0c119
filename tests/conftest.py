"""Shared fixtures: the project root, the toy assets (built once if missing) and a script runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PRETRAIN = ROOT / "data" / "sample" / "pretrain.jsonl"


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
