"""6.1.5: per-GPU memory of a training job before launching it (llmtrain.memory), term by term.

    python code/estimate_memory.py --preset qwen2.5-1.5b --per_device_train_batch_size 16 --block_size 2048 \
        --num_gpus 4 --zero_stage 2 --dtype bf16 --activation_checkpointing --gpu_memory_gib 48

prints one row per term (GiB), the allocated peak per device (what torch.cuda.max_memory_allocated
reports) and the card memory that peak needs (x the caching allocator's measured reserve, + the CUDA
context; `--expandable_segments` for PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True); `--json` prints
one JSON object instead (`peak_gib`, `card_gib`). With `--gpu_memory_gib` it also prints the largest
per-device batch that fits and the gradient accumulation that keeps the global batch (default: the
chapter's 16 x 4 per GPU). `--shell_plan` prints only `BATCH_SIZE=.. GRAD_ACC=..` for the launch scripts
(code/launch_common.sh). `--gpu_memory_gib auto` reads the size of GPU 0. QLoRA: `--lora_r 8 --load_in_4bit`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmtrain.errors import LlmtrainError, run_cli

PRESETS = ("qwen2.5-1.5b",)
CHAPTER_BATCH_PER_GPU = 16 * 4   # the chapter's per-device batch x gradient accumulation
MAX_PLANNED_BATCH = 16           # plans never go above the chapter's per-device batch, the largest measured on a GPU


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--config_name", help="a model folder holding config.json")
    model.add_argument("--preset", help=f"a known architecture: {', '.join(PRESETS)}")
    parser.add_argument("--per_device_train_batch_size", type=int, default=16)
    parser.add_argument("--block_size", type=int, default=2048)
    parser.add_argument("--num_gpus", type=int, default=1)
    parser.add_argument("--zero_stage", type=int, default=2)
    parser.add_argument("--deepspeed", help="a DeepSpeed config: its zero_optimization.stage replaces --zero_stage")
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="bf16",
                        help="auto: what this machine trains in (bf16 GPU: bf16, older GPU: fp16, CPU: fp32)")
    parser.add_argument("--activation_checkpointing", action="store_true")
    parser.add_argument("--use_liger_kernel", action="store_true",
                        help="Liger's fused linear cross-entropy (GPU only, `pip install liger-kernel`)")
    parser.add_argument("--lora_r", type=int, help="LoRA rank: gradients and Adam states for the adapters only")
    parser.add_argument("--lora_target_modules", default="q_proj,v_proj")
    parser.add_argument("--load_in_4bit", action="store_true",
                        help="QLoRA: the frozen base in 4-bit NF4 with double quantisation (needs --lora_r)")
    parser.add_argument("--expandable_segments", action="store_true",
                        help="the run sets PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (smaller allocator reserve)")
    parser.add_argument("--gpu_memory_gib", help="card size in GiB, or 'auto' to read GPU 0")
    parser.add_argument("--global_batch_size", type=int,
                        help=f"samples per optimizer step (default: {CHAPTER_BATCH_PER_GPU} x --num_gpus, the chapter's)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument("--shell_plan", action="store_true", help="print BATCH_SIZE=.. GRAD_ACC=.. (needs --gpu_memory_gib)")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Reject bad input before loading anything."""
    if args.preset is not None and args.preset not in PRESETS:
        raise LlmtrainError(f"--preset {args.preset}: unknown; known presets: {', '.join(PRESETS)}.")
    if args.config_name is not None and not (Path(args.config_name) / "config.json").is_file():
        raise LlmtrainError(f"--config_name {args.config_name}: no config.json there. Point it at a model folder.")
    for flag in ("per_device_train_batch_size", "block_size", "num_gpus", "global_batch_size", "lora_r"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise LlmtrainError(f"--{flag} must be positive, not {value}.")
    if args.deepspeed is not None:
        try:
            args.zero_stage = json.loads(Path(args.deepspeed).read_text())["zero_optimization"]["stage"]
        except (OSError, ValueError, KeyError) as err:
            raise LlmtrainError(f"--deepspeed {args.deepspeed}: cannot read zero_optimization.stage ({err}).") from err
    if args.zero_stage not in (0, 1, 2, 3):
        raise LlmtrainError(f"--zero_stage must be 0, 1, 2 or 3, not {args.zero_stage}.")
    if args.load_in_4bit and not args.lora_r:
        raise LlmtrainError("--load_in_4bit is QLoRA: 4-bit weights are frozen, so pass --lora_r (the adapters train).")
    if args.load_in_4bit and args.zero_stage == 3:
        raise LlmtrainError("--load_in_4bit with ZeRO-3: 4-bit weights are not sharded here; use ZeRO-2 "
                            "(code/ds_config_zero2.json).")
    if args.shell_plan and args.gpu_memory_gib is None:
        raise LlmtrainError("--shell_plan needs --gpu_memory_gib (a number or 'auto').")


def gpu_memory_gib(value: str) -> float:
    """The card size: a number of GiB, or 'auto' for the total memory of GPU 0."""
    if value == "auto":
        import torch

        if not torch.cuda.is_available():
            raise LlmtrainError("--gpu_memory_gib auto: no GPU visible. Pass the card size, e.g. GPU_MEM_GIB=24.")
        return torch.cuda.get_device_properties(0).total_memory / 2**30
    try:
        size = float(value)
    except ValueError:
        raise LlmtrainError(f"--gpu_memory_gib {value}: not a number of GiB (or 'auto').") from None
    if size <= 0:
        raise LlmtrainError(f"--gpu_memory_gib must be positive, not {value}.")
    return size


def no_fit_advice(estimate, card: float, block_size: int) -> str:
    """What to change when not even per-device batch 1 fits `card` GiB."""
    from llmtrain.memory import GIB

    states = (estimate.model_states + estimate.optimizer_step) / GIB
    if states > card / 2:
        return (f"Not even per-device batch 1 x {block_size} fits {card:g} GiB: weights, gradients and Adam states "
                f"alone take {states:.1f} GiB per GPU. Use more GPUs (ZeRO shards them), ZeRO-3 with CPU offload "
                "(DS_CONFIG=code/ds_config_zero3.json), LoRA (USE_LORA=1 bash code/finetune.sh) or QLoRA (USE_QLORA=1).")
    return (f"Not even per-device batch 1 x {block_size} fits {card:g} GiB: try --use_liger_kernel (USE_LIGER=1), "
            "activation checkpointing or a shorter --block_size.")


def main(argv: list[str] | None = None) -> None:
    """6.1.5: estimate one job's per-GPU memory; print the table, the JSON object or the shell plan."""
    args = parse_args(argv)
    check_args(args)
    if args.dtype == "auto":
        from llmtrain.launch import machine_precision

        args.dtype = machine_precision()
    from llmtrain.memory import (
        GIB, card_memory_needed, estimate_training_memory, fits, lora_trainable_params, plan_for_card,
    )
    from llmtrain.modeling import load_config, qwen2_5_1_5b_config

    config = qwen2_5_1_5b_config() if args.preset else load_config(args.config_name)
    setup = {
        "dtype": args.dtype, "zero_stage": args.zero_stage, "activation_checkpointing": args.activation_checkpointing,
        "liger_kernel": args.use_liger_kernel,
        "trainable_params": lora_trainable_params(config, args.lora_target_modules.split(","), args.lora_r)
        if args.lora_r else None,
        "load_in_4bit": args.load_in_4bit,
    }
    expandable = args.expandable_segments
    estimate = estimate_training_memory(config, args.per_device_train_batch_size, args.block_size,
                                        num_gpus=args.num_gpus, **setup)
    report = {
        "per_device_train_batch_size": args.per_device_train_batch_size, "block_size": args.block_size,
        "num_gpus": args.num_gpus, **{k: v for k, v in setup.items() if k != "trainable_params"},
        "trainable_params": setup["trainable_params"], "terms_gib": estimate.gib(), "peak_gib": estimate.gib()["peak"],
        "expandable_segments": expandable, "card_gib": round(card_memory_needed(estimate, expandable) / GIB, 2),
    }
    if args.gpu_memory_gib is not None:
        card = gpu_memory_gib(args.gpu_memory_gib)
        if estimate.weights > card * GIB:
            raise LlmtrainError(f"--gpu_memory_gib {card:g}: smaller than the weights alone "
                                f"({estimate.weights / GIB:.2f} GiB per GPU); shard them with ZeRO-3 or use a bigger card.")
        global_batch = args.global_batch_size or CHAPTER_BATCH_PER_GPU * args.num_gpus
        plan = plan_for_card(config, card, args.block_size, global_batch, args.num_gpus, expandable,
                             MAX_PLANNED_BATCH, **setup)
        report.update(gpu_memory_gib=round(card, 2), fits=fits(estimate, card, expandable),
                      plan=None if plan is None else plan.__dict__)
        if plan is None:
            report["advice"] = no_fit_advice(estimate, card, args.block_size)
        if args.shell_plan:
            if plan is None:
                raise LlmtrainError(report["advice"])
            print(f"BATCH_SIZE={plan.per_device_batch} GRAD_ACC={plan.gradient_accumulation_steps}")
            print(f"# {card:g} GiB per GPU: per-device batch {plan.per_device_batch} x grad-acc "
                  f"{plan.gradient_accumulation_steps} x {args.num_gpus} GPU(s) = {plan.global_batch} samples "
                  f"per step, allocated peak {plan.peak_gib} GiB, card memory needed {plan.card_gib} GiB "
                  "(python code/estimate_memory.py)", file=sys.stderr)
            return
    if args.json:
        print(json.dumps(report))
        return
    print_table(report)


def print_table(report: dict) -> None:
    """The human-readable form: one row per term, the allocated peak, the card memory it needs, the card's plan."""
    from llmtrain.memory import CUDA_CONTEXT_GIB, RESERVE_FACTOR, RESERVE_FACTOR_EXPANDABLE

    lora = f", {'QLoRA' if report['load_in_4bit'] else 'LoRA'} ({report['trainable_params']:,} trainable)" \
        if report["trainable_params"] else ""
    print(f"Per-GPU memory: batch {report['per_device_train_batch_size']} x {report['block_size']} tokens, "
          f"{report['dtype']}, ZeRO-{report['zero_stage']} on {report['num_gpus']} GPU(s), activation checkpointing "
          f"{'on' if report['activation_checkpointing'] else 'off'}{', Liger kernel' if report['liger_kernel'] else ''}"
          f"{lora}\n")
    print(f"| {'term':<18} | {'GiB':>8} |")
    print(f"| {'-' * 18} | {'-' * 7}: |")
    for term, gib in report["terms_gib"].items():
        print(f"| {term:<18} | {gib:>8.2f} |")
    print("\npeak = weights + gradients + optimizer_states + max(activations + max(logits_and_loss, layer_backward), "
          f"optimizer_step) = {report['peak_gib']:.2f} GiB allocated per GPU")
    factor = RESERVE_FACTOR_EXPANDABLE if report["expandable_segments"] else RESERVE_FACTOR
    allocator = "expandable_segments:True" if report["expandable_segments"] else "default caching allocator"
    print(f"card memory needed = peak x {factor} (allocator reserve, {allocator}) + {CUDA_CONTEXT_GIB} GiB "
          f"(CUDA context) = {report['card_gib']:.2f} GiB per GPU (reserve and context measured on an H200, "
          "bench/results/gpu_h200_2026-11-30.json)")
    if "gpu_memory_gib" not in report:
        return
    card = report["gpu_memory_gib"]
    print(f"\nOn a {card:g} GiB card: {'fits' if report['fits'] else 'does NOT fit'}.")
    plan = report["plan"]
    if plan is None:
        print(report["advice"])
    else:
        print(f"Largest fitting plan: per-device batch {plan['per_device_batch']} x gradient accumulation "
              f"{plan['gradient_accumulation_steps']} x {report['num_gpus']} GPU(s) = {plan['global_batch']} samples "
              f"per optimizer step (allocated peak {plan['peak_gib']:.2f} GiB, card memory needed "
              f"{plan['card_gib']:.2f} GiB).")


if __name__ == "__main__":
    run_cli(main)

