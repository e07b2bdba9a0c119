"""What the launch does for a GPU box, checked on the CPU: precision from the machine, TORCH_CUDA_ARCH_LIST for
DeepSpeed's op builder, Liger's noise, the launch switches and the card plan that code/launch_common.sh evals."""

from __future__ import annotations

import logging
import os
import warnings

import pytest
import torch
from transformers import HfArgumentParser, TrainingArguments
from trl import DPOConfig

from conftest import run_cli_in_process, run_script
from llmtrain import LIBRARY_RENAME_WARNING
from llmtrain.errors import LlmtrainError
from llmtrain.memory import GIB, card_memory_needed, estimate_training_memory, fits, lora_trainable_params
from llmtrain.modeling import qwen2_5_1_5b_config
from llmtrain.launch import (
    quiet_liger_backend_warnings, rewrite_cuda_arch_list_for_deepspeed, set_precision_and_checkpointing_defaults,
)

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


def parsed(argv: list[str], config: type = TrainingArguments) -> TrainingArguments:
    """`argv` parsed into `config` the way the scripts parse it: defaults from the machine, set on the parser."""
    parser = HfArgumentParser((config,))
    set_precision_and_checkpointing_defaults(parser, argv)
    (args,) = parser.parse_args_into_dataclasses(args=[*argv, "--output_dir", "unused"])
    return args


@pytest.mark.parametrize("config", [TrainingArguments, DPOConfig], ids=["TrainingArguments", "DPOConfig"])
@pytest.mark.parametrize("argv, bf16, fp16", [
    ([], False, False),                           # fp32 on a CPU: TRL's DPOConfig alone would turn bf16 on
    (["--bf16", "false"], False, False),          # an explicit choice is kept
    (["--fp16=false"], False, False),
    (["--use_cpu", "--bf16"], True, False),       # bf16 autocast on the CPU, asked for explicitly
])
def test_precision_follows_the_machine_on_cpu(config, argv, bf16, fp16):
    args = parsed(argv, config)
    assert (args.bf16, args.fp16) == (bf16, fp16)


def test_trl_checkpointing_default_is_kept_under_its_new_name_and_the_command_line_wins():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)   # the deprecated name would warn on every run
        assert parsed([], DPOConfig).activation_checkpointing is True   # TRL's default, as TRL means it
        assert parsed(["--activation_checkpointing", "false"], DPOConfig).activation_checkpointing is False
        assert parsed([], TrainingArguments).activation_checkpointing is False
        assert parsed(["--gradient_checkpointing", "false"], DPOConfig).activation_checkpointing is False  # old name


@pytest.mark.parametrize("argv, message", [
    (["--bf16"], "--bf16: this machine has no CUDA GPU"),
    (["--bf16", "true"], "--bf16: this machine has no CUDA GPU"),
    (["--bf16=1"], "--bf16: this machine has no CUDA GPU"),
    (["--fp16"], "--fp16: fp16 mixed precision needs a CUDA GPU"),
])
def test_impossible_precision_is_a_clear_error(argv, message):
    with pytest.raises(LlmtrainError, match=message):
        parsed(argv)


@pytest.mark.parametrize("script", ["pretrain.py", "dpo.py"])
def test_bf16_on_a_cpu_is_one_line_exit_1_and_nothing_written(tmp_path, toy_dir, script, capsys, caplog):
    out = tmp_path / "out"
    model_flag = "--config_name" if script == "pretrain.py" else "--model_name_or_path"
    result = run_cli_in_process(script, [model_flag, str(toy_dir), "--train_files", "data/sample/pretrain.jsonl",
                                         "--output_dir", str(out), "--bf16"], capsys, caplog)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "--bf16: this machine has no CUDA GPU" in result.stdout and "Traceback" not in result.stdout
    assert len([line for line in result.stdout.splitlines() if line.startswith("ERROR")]) == 1
    assert not out.exists()


# DeepSpeed's CUDA op builder parsing TORCH_CUDA_ARCH_LIST as its JIT build of FusedAdam does, in a fresh
# interpreter: once DeepSpeed has picked the CPU accelerator, `deepspeed.ops.op_builder` names the CPU builders.
PARSE_AS_DEEPSPEED = """
import os, sys
from deepspeed.ops.op_builder.fused_adam import FusedAdamBuilder
builder = FusedAdamBuilder()
builder.jit_mode = True
for value in sys.argv[1:]:
    os.environ["TORCH_CUDA_ARCH_LIST"] = value
    try:
        builder.compute_capability_args()
        print(value, "PARSED", sep="\t")
    except ValueError as err:
        print(value, f"FAILED {err}", sep="\t")
"""


ARCH_LISTS = {"8.0;9.0a": "8.0;9.0", "9.0a+PTX": "9.0+PTX", "8.0 8.6 9.0a 10.0f": "8.0;8.6;9.0;10.0",
              "9.0;9.0a": "9.0", "8.0;9.0": "8.0;9.0"}


@pytest.mark.parametrize("value, expected", ARCH_LISTS.items())
def test_cuda_arch_list_suffixes_are_dropped(monkeypatch, value, expected):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", value)
    assert rewrite_cuda_arch_list_for_deepspeed() == expected
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == expected


@pytest.mark.slow   # a fresh interpreter that imports DeepSpeed
def test_deepspeeds_jit_builder_parses_the_sanitised_lists_and_not_the_raw_ones():
    lines = run_script(["python", "-c", PARSE_AS_DEEPSPEED, *ARCH_LISTS, *ARCH_LISTS.values()]).stdout.splitlines()
    verdicts = dict(line.split("\t", 1) for line in lines if "\t" in line)
    for value, expected in ARCH_LISTS.items():
        if any(c.isalpha() for c in value.replace("PTX", "")):   # the H200 run's failure, in the installed DeepSpeed
            assert verdicts[value].startswith("FAILED invalid literal for int() with base 10: '0"), verdicts
        assert verdicts[expected] == "PARSED", verdicts


def test_no_arch_list_is_left_alone(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert rewrite_cuda_arch_list_for_deepspeed() is None


def test_liger_backend_noise_is_dropped_and_other_warnings_stay(caplog):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_liger_backend_warnings()
        warnings.warn("Liger rms_norm: requested 'cutile' implementation not usable (no module); falling back to "
                      "'triton'. Set LIGER_KERNEL_STRICT=1 to raise instead.", UserWarning)
        warnings.warn("liger-cute-kernels is not installed; native FLSCE/MoE configuration was skipped.", UserWarning)
        warnings.warn("something else", UserWarning)
    assert [str(w.message) for w in seen] == ["something else"]
    registry = logging.getLogger("liger_kernel.backends.registry")
    with caplog.at_level(logging.WARNING, logger="liger_kernel.backends.registry"):
        registry.warning("Backend impl '%s' for op '%s' could not be imported: %s", "x.cutile", "rms_norm", "err")
        registry.warning("a real problem")
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]


@pytest.mark.parametrize("script, env, message", [
    ("pretrain.sh", {"USE_LIGER": "yes"}, "USE_LIGER=yes: use 1 (on) or 0 (off); or leave it unset"),
    ("finetune.sh", {"USE_QLORA": "true"}, "USE_QLORA=true: use 1 (on) or 0 (off)"),
    ("finetune.sh", {"USE_LORA": "2"}, "USE_LORA=2: use 1 (on) or 0 (off)"),
])
def test_bad_launch_switch_is_one_line_and_exit_1(tmp_path, script, env, message):
    result = run_script(["bash", f"code/{script}"], MODEL_DIR=str(tmp_path / "none"), OUTPUT_DIR=str(tmp_path / "o"),
                        **env)
    assert result.returncode == 1 and message in result.stdout, result.stdout
    assert not (tmp_path / "o").exists()


def plan_in_bash(tmp_path, extra_flags: str = "", **env: str) -> dict[str, str]:
    """Source launch_common.sh as the chapter preset does and print what plan_batch and use_liger decided."""
    qwen2_5_1_5b_config().save_pretrained(tmp_path / "qwen-1.5b")
    script = (f'PRESET=chapter; source code/launch_common.sh; start_stage PRETRAIN; '
              f'MODEL_DIR={tmp_path / "qwen-1.5b"}; LIGER_FLAGS=(); use_liger; plan_batch {extra_flags}; '
              'echo "BATCH_SIZE=$BATCH_SIZE GRAD_ACC=$GRAD_ACC USE_LIGER=$USE_LIGER ALLOC=$PYTORCH_CUDA_ALLOC_CONF"')
    result = run_script(["bash", "-c", script], **env)
    assert result.returncode == 0, result.stdout
    return dict(item.split("=", 1) for item in result.stdout.strip().splitlines()[-1].split())


def test_chapter_plan_on_a_cpu_box_holds_the_allocator_reserve(tmp_path):
    got = plan_in_bash(tmp_path, GPU_MEM_GIB="48", NUM_GPUS="4", PRECISION="bf16")
    assert got["USE_LIGER"] == "0" and got["ALLOC"] == "expandable_segments:True"   # no GPU: no Liger
    batch, grad_acc = int(got["BATCH_SIZE"]), int(got["GRAD_ACC"])
    estimate = estimate_training_memory(qwen2_5_1_5b_config(), batch, 2048, "bf16", 2, 4, activation_checkpointing=True)
    assert fits(estimate, 48, expandable_segments=True) and batch * grad_acc * 4 == 256
    assert estimate.peak < 48 * GIB < card_memory_needed(
        estimate_training_memory(qwen2_5_1_5b_config(), 2 * batch, 2048, "bf16", 2, 4, activation_checkpointing=True),
        expandable_segments=True)


def test_qlora_plan_fits_an_8_gib_card(tmp_path):
    # USE_LIGER=1 as on a GPU box with liger-kernel (the default there): without it the logits of one
    # 2048-token sample alone need 3.5 GiB and nothing fits 8 GiB.
    got = plan_in_bash(tmp_path, "--lora_r 8 --load_in_4bit", GPU_MEM_GIB="8", NUM_GPUS="1", PRECISION="bf16",
                       USE_LIGER="1")
    config = qwen2_5_1_5b_config()
    trainable = lora_trainable_params(config, ["q_proj", "v_proj"], 8)
    estimate = estimate_training_memory(config, int(got["BATCH_SIZE"]), 2048, "bf16", 2, 1, True, liger_kernel=True,
                                        trainable_params=trainable, load_in_4bit=True)
    assert fits(estimate, 8, expandable_segments=True)
    assert int(got["BATCH_SIZE"]) * int(got["GRAD_ACC"]) == 64


def test_use_liger_1_on_a_cpu_is_a_clear_error(tmp_path, toy_dir, capsys, caplog):
    out = tmp_path / "out"
    result = run_cli_in_process("pretrain.py", ["--config_name", str(toy_dir), "--train_files",
                                                "data/sample/pretrain.jsonl", "--output_dir", str(out),
                                                "--use_liger_kernel"], capsys, caplog)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "--use_liger_kernel: Liger's Triton kernels need a CUDA GPU" in result.stdout
    assert "Traceback" not in result.stdout and not out.exists()


@pytest.mark.slow   # trains a step
def test_dpo_py_runs_directly_on_a_cpu_without_precision_or_checkpointing_flags(tmp_path, toy_dir, capsys, caplog):
    # Issue 18: `python code/dpo.py ...` on a CPU died in TRL's DPOConfig (bf16 on by default) and warned that
    # `gradient_checkpointing` is deprecated. A random toy model is enough to check both.
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = tmp_path / "model"
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(toy_dir)).save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(toy_dir / name, model_dir / name)
    out = tmp_path / "dpo"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.filterwarnings("ignore", message=LIBRARY_RENAME_WARNING, category=FutureWarning,
                                module="transformers.modeling_utils")   # peft's and TRL's calls, not ours
        result = run_cli_in_process("dpo.py", ["--model_name_or_path", str(model_dir), "--train_files",
                                               "data/sample/dpo.jsonl", "--output_dir", str(out), "--use_lora",
                                               "--max_steps", "1", "--per_device_train_batch_size", "2",
                                               "--report_to", "none"], capsys, caplog)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "bf16: False" in result.stdout and (out / "adapter_model.safetensors").exists()
