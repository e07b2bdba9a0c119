"""6.1.4-6.1.5: what the chapter's scripts do around Trainer: logging, resume, DeepSpeed on CPU, throughput.

The scripts stay thin: parse flags, load data and model, then `build_trainer` and `train_and_save`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from transformers import Trainer, TrainerCallback, TrainingArguments

from llmtrain.errors import LlmtrainError
from llmtrain.modeling import count_parameters
from llmtrain.plotting import plot_loss

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"

# bf16/fp16 dense tensor-core peak per device, TFLOP/s (vendor datasheets). Longest key matched first.
GPU_PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H800": 989.0,
    "H200": 989.0,
    "H20": 148.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "A10": 125.0,
    "V100": 125.0,
    "T4": 65.0,
}


STALE_BUILD_LOCK_SECONDS = 600  # compiling an op takes under 2 minutes on 2 cores; a lock this old has no owner


def use_environment_torch_extensions(stale_after: float = STALE_BUILD_LOCK_SECONDS) -> Path:
    """6.1.5: DeepSpeed's CPU ops are compiled into <this environment>/torch_extensions; leftover build locks go.

    On CPU, DeepSpeed compiles two C++ ops the first time a run needs them (the shared-memory allreduce and
    fused Adam), each under a lock file that the other processes wait on. A run killed while compiling leaves
    the lock behind, and every later run waits on it forever without a word. So the build directory belongs
    to the Python environment (a fresh .venv starts clean; `~/.cache/torch_extensions` is shared by all of
    them), and a lock older than `stale_after` seconds is removed with a warning. An explicit
    TORCH_EXTENSIONS_DIR is kept. `make setup` compiles both ops once (`build_cpu_deepspeed_ops`).
    """
    root = Path(os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions")))
    for lock in root.glob("*/lock"):
        try:
            age = time.time() - lock.stat().st_mtime
            if age >= stale_after:
                lock.unlink()
                logger.warning("Removed %s: a build lock %.0f minutes old, left by a run killed while compiling",
                               lock, age / 60)
        except FileNotFoundError:  # another process removed it first
            pass
    return root


def build_cpu_deepspeed_ops() -> Path | None:
    """Compile DeepSpeed's CPU ops (shared-memory allreduce, fused Adam) once, so no launch compiles or waits.

    Does nothing where a GPU is visible: there DeepSpeed builds its CUDA ops itself, into `~/.cache/torch_extensions`.
    """
    if torch.cuda.is_available():
        return None
    root = use_environment_torch_extensions(stale_after=0)  # one process, before any run: every lock left is stale
    from deepspeed.accelerator import get_accelerator

    for name in ("ShareMemCommBuilder", "FusedAdamBuilder"):
        get_accelerator().create_op_builder(name).load(verbose=False)
    return root


def start_gloo_for_cpu_deepspeed(argv: Sequence[str] | None = None) -> list[str]:
    """6.1.5: under the deepspeed launcher without a GPU, create the gloo process group; returns the flags to parse.

    transformers 5 leaves the world size at 1 when DeepSpeed runs on CPU, so every process would
    train on all the data alone. This creates the distributed state over gloo before TrainingArguments
    (and sets ACCELERATE_USE_DEEPSPEED) and adds `--accelerator_config {"use_configured_state": true}`
    so the Trainer uses it: real data-parallel ZeRO-2. Elsewhere it changes nothing.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    uses_deepspeed = any(a == "--deepspeed" or a.startswith("--deepspeed=") for a in args)
    if uses_deepspeed and not torch.cuda.is_available():
        use_environment_torch_extensions()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
            PartialState(backend="gloo")
            if not any(a.startswith("--accelerator_config") for a in args):
                args += ["--accelerator_config", json.dumps({"use_configured_state": True})]
    return args


def machine_precision(use_cpu: bool = False) -> str:
    """6.1.5: the mixed precision this machine trains in: bf16 where the GPU has it, fp16 on older GPUs, fp32 on CPU."""
    if use_cpu or not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1", "t", "y"), ("false", "no", "0", "f", "n")


def _bool_flag(args: Sequence[str], name: str) -> bool | None:
    """The value of a boolean TrainingArguments flag in `args` (`--x`, `--x true`, `--x=false`); None if absent."""
    value = None
    for i, arg in enumerate(args):
        if arg == f"--{name}":
            following = args[i + 1].lower() if i + 1 < len(args) else ""
            value = following not in FALSE_WORDS
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1].lower() in TRUE_WORDS
    return value


def add_machine_precision(args: Sequence[str]) -> list[str]:
    """6.1.5: the script's flags with --bf16/--fp16 set from the machine unless given; an impossible request is an error.

    TrainingArguments alone trains in fp32 on a bf16 GPU, and TRL's configs turn bf16 on even on a CPU
    (where TrainingArguments then raises). `--bf16` without a bf16 GPU (and without `--use_cpu`, which
    asks for CPU bf16 autocast) or `--fp16` without a GPU stops here with one clear message.
    """
    args = list(args)
    use_cpu = bool(_bool_flag(args, "use_cpu"))
    machine = machine_precision(use_cpu)
    bf16, fp16 = _bool_flag(args, "bf16"), _bool_flag(args, "fp16")
    gpu = "no CUDA GPU" if not torch.cuda.is_available() else f"{torch.cuda.get_device_name(0)} has no bf16"
    if bf16 and not use_cpu and machine != "bf16":
        raise LlmtrainError(f"--bf16: this machine has {gpu}. Drop the flag ({machine} is this machine's default) "
                            "or add --use_cpu for bf16 autocast on the CPU.")
    if fp16 and machine == "fp32":
        raise LlmtrainError("--fp16: fp16 mixed precision needs a CUDA GPU and this run has none. Drop the flag "
                            "(fp32 is the default on a CPU).")
    if bf16 is None and fp16 is None:
        args += {"bf16": ["--bf16", "true"], "fp16": ["--fp16", "true", "--bf16", "false"],
                 "fp32": ["--bf16", "false"]}[machine]
    return args


def trl_checkpointing_default(args: Sequence[str]) -> list[str]:
    """TRL's configs turn checkpointing on under its deprecated name (a FutureWarning on every run): pass the
    same default under the new name, unless the command line sets either name."""
    if any(a.split("=")[0] in ("--activation_checkpointing", "--gradient_checkpointing") for a in args):
        return list(args)
    return [*args, "--activation_checkpointing", "true"]


def parse_trl_script_args(dataclass_types: tuple[type, ...], argv: Sequence[str]) -> tuple:
    """6.4/6.5: a TRL script's flags parsed into `dataclass_types` (a TRL config last), logging set up.

    `--help` works (TRL's help texts are escaped for argparse); a value the config rejects is one clear error.
    Precision follows the machine (TRL's configs turn bf16 on, which stops a CPU run), checkpointing is
    asked for under its new name, and DeepSpeed on a CPU gets its gloo process group first.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types)
    for action in parser._actions:  # TRL's help texts hold bare '%' signs, which `--help` would try to format
        if action.help and "%" in action.help:
            action.help = re.sub(r"%(?!\()", "%%", action.help)
    try:
        parsed = parser.parse_args_into_dataclasses(
            args=start_gloo_for_cpu_deepspeed(trl_checkpointing_default(add_machine_precision(argv))))
    except ValueError as error:  # a config's own check of the flags' values (TRL's __post_init__)
        raise LlmtrainError(f"{error} Change the flags it names (python {sys.argv[0]} --help lists them).") from None
    set_deepspeed_safe_cuda_arch_list()
    setup_logging(parsed[-1])
    logger.info("Training arguments: %s", parsed[-1])
    return parsed


def set_deepspeed_safe_cuda_arch_list() -> str | None:
    """6.1.5: rewrite TORCH_CUDA_ARCH_LIST in os.environ into the form DeepSpeed's JIT builder parses; returns it.

    DeepSpeed 0.19's `compute_capability_args` reads each entry as `major.minor[+PTX]` and fails on an
    arch suffix (`9.0a`, `10.0f`: "invalid literal for int() with base 10: '0a'"), so FusedAdam does not
    build. The suffix only enables architecture-specific instructions that DeepSpeed's ops do not use:
    `8.0;9.0a` becomes `8.0;9.0`, `9.0a+PTX` becomes `9.0+PTX`. Other entries are kept as they are.
    """
    value = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not value or not value.strip():
        return value
    entries = [e for e in re.split(r"[;\s]+", value.strip()) if e]
    cleaned = []
    for entry in entries:
        match = re.fullmatch(r"(\d+)\.(\d+)[a-zA-Z]*(\+PTX)?", entry)
        fixed = f"{match[1]}.{match[2]}{match[3] or ''}" if match else entry
        if fixed not in cleaned:
            cleaned.append(fixed)
    sanitized = ";".join(cleaned)
    if sanitized != value:
        logger.warning("TORCH_CUDA_ARCH_LIST=%r -> %r for DeepSpeed's op builder (arch suffixes dropped)",
                       value, sanitized)
        os.environ["TORCH_CUDA_ARCH_LIST"] = sanitized
    return sanitized


class _LigerBackendNoise(logging.Filter):
    """Drops Liger's import-time reports about optional backends (cuTile, CuTe DSL) this machine lacks."""

    PREFIXES = ("Backend impl '", "_discover(")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


def quiet_liger_backend_warnings() -> None:
    """6.1.5: keep Liger's import-time backend warnings out of the logs; its other warnings stay.

    liger-kernel logs one warning per optional kernel backend it cannot import and warns when it falls
    back to its default Triton kernels; neither changes what trains. Installs a logging filter on
    liger_kernel.backends.registry and message filters for those warnings only.
    """
    logging.getLogger("liger_kernel.backends.registry").addFilter(_LigerBackendNoise())
    warnings.filterwarnings("ignore", message=r"Liger .*: requested '.*' implementation not usable")
    warnings.filterwarnings("ignore", message=r"liger-cute-kernels is not installed")


def check_liger_kernel(training_args: TrainingArguments) -> None:
    """6.1.5: --use_liger_kernel needs a CUDA GPU and liger-kernel installed; say so before any work, and quiet it."""
    if not getattr(training_args, "use_liger_kernel", False):
        return
    if training_args.device.type != "cuda":
        raise LlmtrainError("--use_liger_kernel: Liger's Triton kernels need a CUDA GPU and this run has none. "
                            "Drop the flag (USE_LIGER=0).")
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        raise LlmtrainError("--use_liger_kernel: liger-kernel is not installed. pip install -r requirements-gpu.txt, "
                            "or drop the flag (USE_LIGER=0).")
    quiet_liger_backend_warnings()


def setup_logging(training_args: TrainingArguments) -> None:
    """6.1.5: the chapter's logging setup: one format for our, transformers' and datasets' messages."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    # Our messages at INFO on the main process; transformers and datasets stay at WARNING unless
    # --log_level / --log_level_replica ask for more (the chapter's INFO dumps every config).
    ours = logging.INFO if training_args.should_log else logging.WARNING
    if training_args.log_level != "passive":
        ours = training_args.get_process_log_level()
        datasets.utils.logging.set_verbosity(ours)
        transformers.utils.logging.set_verbosity(ours)
    logging.getLogger("llmtrain").setLevel(ours)
    logging.getLogger("__main__").setLevel(ours)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        "Process rank: %s, device: %s, world size: %s, distributed: %s, bf16: %s",
        training_args.process_index, training_args.device, training_args.world_size,
        training_args.parallel_mode.value, training_args.bf16,
    )


def _checkpoints(output_dir: str) -> list[tuple[int, str]]:
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def delete_checkpoints(training_args: TrainingArguments) -> None:
    """6.1.5: --overwrite_output_dir: delete output_dir's checkpoint-* folders (on the main process) to start over."""
    if not os.path.isdir(training_args.output_dir):
        return
    with training_args.main_process_first(desc="clearing old checkpoints"):
        if training_args.process_index == 0:
            for _, path in _checkpoints(training_args.output_dir):
                logger.warning("--overwrite_output_dir: deleting %s", path)
                shutil.rmtree(path)


def find_resume_checkpoint(training_args: TrainingArguments, overwrite_output_dir: bool = False) -> str | None:
    """6.1.5: the checkpoint to resume from: the user's, else the newest complete one in output_dir.

    A checkpoint is complete once Trainer has written its trainer_state.json (the last file it
    writes), so a run killed while saving resumes from the previous checkpoint. A non-empty
    output_dir without any checkpoint is an error, unless --overwrite_output_dir says to start over
    (then nothing is resumed; `delete_checkpoints` clears the old ones).
    """
    if training_args.resume_from_checkpoint:
        if not os.path.isfile(os.path.join(training_args.resume_from_checkpoint, TRAINER_STATE)):
            raise LlmtrainError(
                f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: not a complete checkpoint "
                f"(no {TRAINER_STATE}). Pass a checkpoint-N folder written by Trainer."
            )
        return training_args.resume_from_checkpoint
    output_dir = training_args.output_dir
    if overwrite_output_dir or not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return None
    checkpoints = _checkpoints(output_dir)
    complete = [path for _, path in checkpoints if os.path.isfile(os.path.join(path, TRAINER_STATE))]
    for _, path in checkpoints:
        if path not in complete:
            logger.warning("Ignoring incomplete checkpoint %s (no %s)", path, TRAINER_STATE)
    if complete:
        logger.info("Resuming training from %s", complete[-1])
        return complete[-1]
    raise LlmtrainError(
        f"Output directory {output_dir} is not empty and holds no checkpoint to resume from. "
        "Pass --overwrite_output_dir to train into it anyway, or choose another --output_dir."
    )


def split_for_eval(
    samples: datasets.Dataset, percentage: int, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """6.1.4: hold out `percentage`% (0 < p < 100, checked by DataArguments) of the samples, at least one, for eval."""
    if percentage <= 0:
        return samples, None
    if len(samples) < 2:
        raise LlmtrainError(f"--validation_split_percentage {percentage} needs at least 2 samples (have {len(samples)}).")
    n_eval = max(1, len(samples) * percentage // 100)
    parts = samples.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def device_peak_flops(device: torch.device) -> float | None:
    """6.1.5: per-device peak FLOP/s for MFU: a datasheet table for GPUs, a measured matmul on CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
            if key in name:
                return GPU_PEAK_TFLOPS[key] * 1e12
        logger.warning("No peak FLOP/s known for %s: pass --peak_tflops to get an MFU estimate", name)
        return None
    if device.type == "cpu":
        return measure_cpu_matmul_flops()
    return None


def measure_cpu_matmul_flops(size: int = 512, seconds: float = 0.3) -> float:
    """6.1.5: FLOP/s of a float32 matmul on this CPU with this process's threads: the CPU's practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - start)


class ThroughputCallback(TrainerCallback):
    """6.1.5: adds tokens/s and MFU (6·N·tokens/s ÷ peak FLOP/s of all devices) to each training log, and on a GPU
    the process's peak allocated and reserved memory (torch.cuda.max_memory_allocated / max_memory_reserved).

    Tokens are the Trainer's own count of input tokens seen over all processes (including padding).
    With LoRA, frozen weights skip their weight gradients, so 6·N somewhat overstates the work done.
    """

    def __init__(self, n_params: int, peak_flops_per_device: float | None) -> None:
        self.n_params = n_params
        self.peak = peak_flops_per_device
        self._last: tuple[float, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), state.num_input_tokens_seen)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or self._last is None:
            return
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        seconds, new_tokens = now - self._last[0], tokens - self._last[1]
        self._last = (now, tokens)
        if seconds <= 0 or new_tokens <= 0:
            return
        metrics = {"tokens_per_second": round(new_tokens / seconds, 1)}
        if self.peak:
            metrics["mfu"] = round(6 * self.n_params * new_tokens / seconds / (self.peak * args.world_size), 4)
        if torch.cuda.is_available():  # this process's peaks so far: what the memory model predicts, what the card holds
            metrics["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            metrics["max_memory_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)


def build_trainer(
    model: torch.nn.Module,
    training_args: TrainingArguments,
    tokenizer: Any,
    train_dataset: Any,
    eval_dataset: Any = None,
    data_collator: Any = None,
    peak_tflops: float | None = None,
) -> Trainer:
    """6.1.4: the chapter's Trainer, updated for transformers 5 (processing_class, a real Dataset).

    The dataset goes in as a `datasets.Dataset`, not the chapter's IterableWrapper, so the
    Trainer builds a distributed, shuffling sampler. Throughput and MFU are added to the logs.
    """
    if training_args.include_num_input_tokens_seen == "no":
        training_args.include_num_input_tokens_seen = "all"
    # Training never reuses a KV cache, and with a cache object in the forward pass the model
    # cannot derive per-conversation attention from position_ids: packed SFT batches would attend
    # across conversations. `train_and_save` turns the cache back on for the saved model.
    model.config.use_cache = False
    peak = peak_tflops * 1e12 if peak_tflops else device_peak_flops(training_args.device)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=data_collator,
    )
    # First in line, so trackers (tensorboard, wandb, swanlab) see the added metrics too.
    n_params = count_parameters(model)
    trainer.callback_handler.callbacks.insert(0, ThroughputCallback(n_params, peak))
    return trainer


def train_and_save(trainer: Trainer, checkpoint: str | None) -> dict[str, float]:
    """6.1.5: train (resuming from `checkpoint`), save model, metrics, state and the loss plot.

    With an eval set, also reports eval loss and perplexity = exp(eval loss).
    """
    logger.info("Starting training%s", f" from {checkpoint}" if checkpoint else "")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    result.metrics["trainable_params"] = count_parameters(trainer.model, trainable_only=True)
    metrics = dict(result.metrics)
    if trainer.eval_dataset is not None:  # still without KV cache: packed eval batches stay isolated
        eval_metrics = trainer.evaluate()
        eval_metrics["perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50.0))
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    trainer.model.config.use_cache = True  # for generation with the saved model
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        out = os.path.join(trainer.args.output_dir, "loss.png")
        plot_loss(trainer.state.log_history, out)
        logger.info("Loss curve saved to %s", out)
    return metrics
