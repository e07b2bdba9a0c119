"""6.1.5: how much memory training needs per GPU under ZeRO stages 0-3 (the ZeRO paper's accounting)."""

from __future__ import annotations

# Mixed-precision Adam: 2 bytes of bf16/fp16 weights and 2 of gradients per parameter, plus
# K = 12 bytes of optimizer state (fp32 master weights, momentum and variance).
WEIGHT_BYTES, GRAD_BYTES, ADAM_STATE_BYTES = 2, 2, 12


def zero_memory_per_gpu(n_params: int, n_gpus: int, stage: int) -> dict[str, float]:
    """6.1.5: bytes per GPU for weights, gradients and optimizer state (activations excluded).

    Stage 1 shards the optimizer state over the GPUs, stage 2 also the gradients, stage 3 also
    the weights; stage 0 is plain data parallelism, where every GPU holds everything.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, not {stage}")

    def per_gpu(nbytes: int, sharded: bool) -> float:
        return n_params * nbytes / (n_gpus if sharded else 1)

    parts = {
        "weights": per_gpu(WEIGHT_BYTES, stage >= 3),
        "gradients": per_gpu(GRAD_BYTES, stage >= 2),
        "optimizer": per_gpu(ADAM_STATE_BYTES, stage >= 1),
    }
    parts["total"] = sum(parts.values())
    return parts
