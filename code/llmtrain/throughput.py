"""6.1.5: throughput and MFU in every training log: tokens/s, 6·N·tokens/s over the devices' peak FLOP/s.

On the scripts' training path (`build_trainer` adds `ThroughputCallback` first in line). The peak is a datasheet
table for GPUs and a measured float32 matmul on a CPU.
"""

from __future__ import annotations

import logging
import time

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

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
