"""6.1.5: what every training script does before it loads data: parse its flags and set up this process.

On the scripts' training path (code/pretrain.py, finetune.py, dpo.py, grpo.py all start with
`parse_flags_and_set_up_process`). What it changes, in order:
  - the parser's defaults: precision from the machine (bf16 GPU -> bf16, older GPU -> fp16, CPU -> fp32) and,
    for TRL's configs, activation checkpointing under its transformers-5 name; the command line always wins;
  - under the deepspeed launcher on a CPU: the environment (ACCELERATE_USE_DEEPSPEED, TORCH_EXTENSIONS_DIR), stale
    build-lock files, and a gloo process group, so that 2 CPU processes really train data-parallel;
  - TORCH_CUDA_ARCH_LIST, rewritten into the form DeepSpeed's op builder parses;
  - logging (one format for ours, transformers' and datasets' messages).
A flag value a config rejects is one clear error (`LlmtrainError`), never a traceback.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import datasets
import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments

from llmtrain.errors import LlmtrainError

logger = logging.getLogger(__name__)

STALE_BUILD_LOCK_SECONDS = 600  # compiling an op takes under 2 minutes on 2 cores; a lock this old has no owner


def machine_precision(use_cpu: bool = False) -> str:
    """6.1.5: the mixed precision this machine trains in: bf16 where the GPU has it, fp16 on older GPUs, fp32 on CPU."""
    if use_cpu or not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def set_precision_and_checkpointing_defaults(parser: HfArgumentParser, argv: Sequence[str]) -> None:
    """6.1.5: set `parser`'s defaults for --bf16/--fp16 from the machine, and TRL's checkpointing default under the
    new name; an impossible request on the command line is an error.

    TrainingArguments alone trains in fp32 on a bf16 GPU, and TRL's configs turn bf16 on even on a CPU (where
    TrainingArguments then raises). `--bf16` without a bf16 GPU (and without `--use_cpu`, which asks for CPU bf16
    autocast) or `--fp16` without a GPU stops here with one clear message. TRL's configs also turn checkpointing on
    under its deprecated name (a FutureWarning on every run): the same default is set under the new one.
    """
    for action in parser._actions:  # TRL's configs type them `bool | None`, which would make `--bf16` need a value
        if action.dest in ("bf16", "fp16"):
            action.nargs, action.const = "?", True
    parser.set_defaults(bf16=None, fp16=None)  # None: not on the command line
    given, _ = parser.parse_known_args(list(argv))
    machine = machine_precision(bool(given.use_cpu))
    gpu = "no CUDA GPU" if not torch.cuda.is_available() else f"{torch.cuda.get_device_name(0)} has no bf16"
    if given.bf16 and not given.use_cpu and machine != "bf16":
        raise LlmtrainError(f"--bf16: this machine has {gpu}. Drop the flag ({machine} is this machine's default) "
                            "or add --use_cpu for bf16 autocast on the CPU.")
    if given.fp16 and machine == "fp32":
        raise LlmtrainError("--fp16: fp16 mixed precision needs a CUDA GPU and this run has none. Drop the flag "
                            "(fp32 is the default on a CPU).")
    if given.bf16 is None and given.fp16 is None:
        parser.set_defaults(bf16=machine == "bf16", fp16=machine == "fp16")
    else:
        parser.set_defaults(bf16=False, fp16=False)
    if parser.get_default("gradient_checkpointing") and given.activation_checkpointing is None:
        parser.set_defaults(activation_checkpointing=given.gradient_checkpointing, gradient_checkpointing=None)


def use_environment_torch_extensions(stale_after: float = STALE_BUILD_LOCK_SECONDS) -> Path:
    """6.1.5: set TORCH_EXTENSIONS_DIR to <this environment>/torch_extensions (unless set) and delete the build
    locks there that are older than `stale_after` seconds; returns the directory.

    On CPU, DeepSpeed compiles two C++ ops the first time a run needs them (the shared-memory allreduce and
    fused Adam), each under a lock file that the other processes wait on. A run killed while compiling leaves
    the lock behind, and every later run waits on it forever without a word. So the build directory belongs
    to the Python environment (a fresh .venv starts clean; `~/.cache/torch_extensions` is shared by all of
    them), and an old lock is removed with a warning. `make setup` compiles both ops once (`build_cpu_deepspeed_ops`).
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


def start_gloo_process_group_for_cpu_deepspeed(parser: HfArgumentParser, argv: Sequence[str]) -> bool:
    """6.1.5: under the deepspeed launcher without a GPU, start the gloo process group and make the parser's
    `--accelerator_config` default use it; returns whether it did.

    transformers 5 leaves the world size at 1 when DeepSpeed runs on CPU, so every process would train on all the
    data alone. This sets ACCELERATE_USE_DEEPSPEED, creates the distributed state over gloo before
    TrainingArguments exists, and defaults `--accelerator_config` to {"use_configured_state": true} so the Trainer
    uses it: real data-parallel ZeRO-2. It also points DeepSpeed's op builds at this environment
    (`use_environment_torch_extensions`). Elsewhere it changes nothing.
    """
    given, _ = parser.parse_known_args(list(argv))
    if not getattr(given, "deepspeed", None) or torch.cuda.is_available():
        return False
    use_environment_torch_extensions()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    parser.set_defaults(accelerator_config=json.dumps({"use_configured_state": True}))
    return True


def rewrite_cuda_arch_list_for_deepspeed() -> str | None:
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
    """6.1.5: install filters that keep Liger's import-time backend warnings out of the logs; its other warnings stay.

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
    if importlib.util.find_spec("liger_kernel") is None:
        raise LlmtrainError("--use_liger_kernel: liger-kernel is not installed. pip install -e '.[gpu]', "
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


def parse_flags_and_set_up_process(dataclass_types: tuple[type, ...], argv: Sequence[str]) -> tuple:
    """6.1.5: the scripts' flags parsed into `dataclass_types` (TrainingArguments or a TRL config last), after
    setting up this process: the parser's precision and checkpointing defaults, the CPU gloo process group
    (environment and lock files included), TORCH_CUDA_ARCH_LIST, logging and the Liger check.

    `--help` works (TRL's help texts are escaped for argparse). A value a config rejects in its own checks
    (transformers' or TRL's `__post_init__`, e.g. `--load_best_model_at_end` without evaluation) is one clear
    error. Nothing is written to the output directory here.
    """
    parser = HfArgumentParser(dataclass_types)
    for action in parser._actions:  # TRL's help texts hold bare '%' signs, which `--help` would try to format
        if action.help and "%" in action.help:
            action.help = re.sub(r"%(?!\()", "%%", action.help)
    set_precision_and_checkpointing_defaults(parser, argv)
    start_gloo_process_group_for_cpu_deepspeed(parser, argv)
    try:
        parsed = parser.parse_args_into_dataclasses(args=list(argv))
    except ValueError as error:  # a config's own check of the flags' values
        raise LlmtrainError(f"{error} Change the flags it names (python {sys.argv[0]} --help lists them).") from None
    training_args = parsed[-1]
    rewrite_cuda_arch_list_for_deepspeed()
    setup_logging(training_args)
    check_liger_kernel(training_args)
    logger.info("Training arguments: %s", training_args)
    return parsed
