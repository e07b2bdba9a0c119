"""The four launchers' shared layer (code/launch_common.sh, code/presets/*.env), checked without training anything:
how a value is looked up, what each preset passes, and the guard against training into a mistyped MODEL_DIR."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT, run_script, script_env
from llmtrain.toy import toy_preset

STAGES = {"pretrain.sh": "PRETRAIN", "finetune.sh": "SFT", "dpo.sh": "DPO", "grpo.sh": "GRPO"}


def preset_values(preset: str, stage: str, *variants: str, names: str = "", **env: str) -> dict[str, str]:
    """Source launch_common.sh, start `stage` with `variants` and print what take_preset gives each of `names`."""
    script = (f"PRESET={preset}; source code/launch_common.sh; start_stage {stage} {' '.join(variants)}; "
              f"take_preset {names}; "
              + "; ".join(f'echo "{n}=${{{n}}}"' for n in ["MODEL_DIR", "OUTPUT_DIR", "LR", "EPOCHS", "BATCH_SIZE",
                                                           "PRECISION", "NUM_GPUS", *names.split()]))
    result = run_script(["bash", "-c", script], **env)
    assert result.returncode == 0, result.stdout
    return dict(line.split("=", 1) for line in result.stdout.strip().splitlines())


def test_a_value_comes_from_the_most_specific_key_and_the_environment_wins():
    toy = toy_preset()
    lora = preset_values("toy", "SFT", "LORA", TOY_RUN_DIR="")   # "" as unset: the session pipeline exports its own
    assert float(lora["LR"]) == toy["TOY_SFT_LORA_LR"] != toy["TOY_SFT_LR"]        # <STAGE>_<VARIANT>_<NAME>
    assert lora["BATCH_SIZE"] == str(toy["TOY_SFT_BATCH_SIZE"])                      # <STAGE>_<NAME>
    assert lora["NUM_GPUS"] == "2" and lora["PRECISION"] == "fp32"                 # <NAME>
    assert lora["OUTPUT_DIR"] == f"{ROOT}/output/toy/sft-lora"                     # $RUN_DIR expanded
    qlora = preset_values("toy", "SFT", "QLORA", "LORA")
    assert qlora["LR"] == lora["LR"] and qlora["OUTPUT_DIR"].endswith("/sft-qlora")
    assert preset_values("toy", "SFT", "LORA", LR="1e-3")["LR"] == "1e-3"
    assert preset_values("toy", "SFT", "LORA", LR="")["LR"] == lora["LR"]       # empty: the preset's
    moved = preset_values("toy", "DPO", "LORA", TOY_RUN_DIR="/elsewhere")
    assert moved["MODEL_DIR"] == "/elsewhere/sft" and moved["OUTPUT_DIR"] == "/elsewhere/dpo-lora"
    chapter = preset_values("chapter", "GRPO", "LORA", names="STYLE_SUFFIX EVAL_FILES")
    assert chapter["STYLE_SUFFIX"] == "" and chapter["EVAL_FILES"] == "autodl-tmp/dataset/gsm8k/test.jsonl"
    assert chapter["NUM_GPUS"] == "all" and chapter["PRECISION"] == "auto"
    assert preset_values("toy", "GRPO", "LORA", names="EVAL_FILES", EVAL_FILES="none")["EVAL_FILES"] == ""


def launched(tmp_path, toy_dir, script: str, **env: str) -> list[str]:
    """The command line `code/<script>` hands the deepspeed launcher, caught by a `deepspeed` on PATH that prints it
    (the launchers' shell layer alone; the scripts themselves run for real in the session pipeline)."""
    stub = tmp_path / "bin" / "deepspeed"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    result = run_script(["bash", f"code/{script}"], PATH=f"{stub.parent}:{script_env()['PATH']}",
                        MODEL_DIR=str(toy_dir), GPU_MEM_GIB="80", **env)
    assert result.returncode == 0, result.stdout[-3000:]
    return [line for line in result.stdout.splitlines() if not line.startswith("+")]


@pytest.mark.parametrize("preset", ["toy", "chapter"])
@pytest.mark.parametrize("script, env", [("pretrain.sh", {}), ("finetune.sh", {}), ("finetune.sh", {"USE_LORA": "1"}),
                                         ("dpo.sh", {}), ("dpo.sh", {"USE_LORA": "0"}), ("grpo.sh", {})])
def test_every_flag_a_launcher_passes_has_a_value(tmp_path, toy_dir, preset, script, env):
    """Each value a launcher takes is in each preset: none is passed empty, and the seed, precision and checkpointing
    are the preset's."""
    argv = launched(tmp_path, toy_dir, script, PRESET=preset, **env)
    flags = {a: argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
             for i, a in enumerate(argv) if a.startswith("--")}
    empty = sorted(f for f, v in flags.items() if v == "")
    assert not empty, f"{script} (PRESET={preset}) passes {empty} without a value"
    assert flags["--seed"] == "12" and flags["--report_to"] == "none"
    if preset == "toy":
        assert argv[0] == "--num_gpus" and argv[1] == "2"
        assert (flags["--bf16"], flags["--fp16"], flags["--activation_checkpointing"]) == ("false", "false", "false")
    else:
        assert "--num_gpus" not in flags and "--bf16" not in flags and flags["--activation_checkpointing"] == "true"


@pytest.mark.parametrize("script", ["finetune.sh", "dpo.sh", "grpo.sh"])
def test_a_mistyped_model_dir_is_never_trained_into(tmp_path, script):
    """The toy preset builds a missing model only in its own default folder; a typo stops with how to get it."""
    typo = tmp_path / "outptu" / "toy" / "sft"
    result = run_script(["bash", f"code/{script}"], PRESET="toy", MODEL_DIR=str(typo), OUTPUT_DIR=str(tmp_path / "o"))
    assert result.returncode == 1, result.stdout[-2000:]
    assert f"in {typo}" in result.stdout and "running PRESET=toy" not in result.stdout
    assert not typo.exists() and not (tmp_path / "o").exists()


def test_the_chapter_grpo_launch_prints_its_memory_estimate_first(tmp_path, toy_dir):
    """Issue 27: like pretrain.sh's plan, grpo.sh (chapter preset) prints what a training step of its batch needs."""
    lines = launched(tmp_path, toy_dir, "grpo.sh", PRESET="chapter")
    estimate = next(i for i, line in enumerate(lines) if line.startswith("Per-GPU memory: batch 16 x 1024 tokens"))
    assert "LoRA (" in lines[estimate] and "On a 80 GiB card: fits." in lines
    assert estimate < lines.index("--train_files")   # before the launch
