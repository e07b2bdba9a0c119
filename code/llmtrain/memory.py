"""6.1.5: what fits on a GPU: model states under ZeRO 0-3, activations, logits, and the peak per device.

The model counts bytes the way PyTorch and DeepSpeed hold them during one training step of a
Qwen2-style causal LM. Peak = model states (weights, gradients, optimizer states, held all the
time) + the larger of two transients: backward (the saved activations plus the loss buffers over
the vocabulary at its start, or later the backward of one layer) and the optimizer
step (DeepSpeed's fp32 gradient partition, or PyTorch AdamW's temporaries). bench/memory_model.py checks it against
measured CPU peaks; on a GPU the card must also hold the caching allocator's reserve and the CUDA context
(`card_memory_needed`, measured on an H200: bench/results/gpu_h200_2026-11-30.json).
On the launchers' path: code/estimate_memory.py plans the chapter preset's batch with it before a launch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from llmtrain.lora import lora_parameter_count
from llmtrain.modeling import count_parameters, qwen2_parameter_formula

GIB = 2**30
DTYPES = ("fp32", "bf16", "fp16")
# bf16/fp16 are mixed precision: 16-bit working weights, gradients and activations.
WORKING_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Adam keeps momentum and variance in fp32 (8 bytes); mixed precision adds the fp32 master
# weights (4 more): the ZeRO paper's K = 12.
ADAM_STATE_BYTES = {"fp32": 8, "bf16": 12, "fp16": 12}
# The causal-LM loss per token and vocabulary entry at the start of backward, in fp32: the
# log-probabilities log_softmax keeps for backward, their gradient, and the gradient of the logits.
LOSS_BYTES_PER_LOGIT = 3 * 4
# What a card must hold beyond the allocated peak, measured on one H200 through code/pretrain.sh
# (bench/results/gpu_h200_2026-11-30.json): PyTorch's caching allocator reserved 1.20-1.35x
# torch.cuda.max_memory_allocated (1.25x with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True), and
# nvidia-smi showed 1.68 GiB more than reserved in every run (CUDA context, cuBLAS workspace).
# NCCL buffers of a multi-GPU run are not in these numbers.
RESERVE_FACTOR = 1.36
RESERVE_FACTOR_EXPANDABLE = 1.26
CUDA_CONTEXT_GIB = 1.7
# QLoRA (bitsandbytes NF4 with double quantisation): a 4-bit code per weight, one absmax per block of
# 64 weights stored in 8 bits, and one fp32 scale (plus offset) per block of 256 absmax values.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 8 / (64 * 256)


def zero_memory_per_gpu(
    n_params: int, n_gpus: int, stage: int, dtype: str = "bf16", trainable_params: int | None = None,
) -> dict[str, float]:
    """6.1.5: bytes per GPU for weights, gradients and optimizer state (activations excluded).

    Stage 1 shards the optimizer state over the GPUs, stage 2 also the gradients, stage 3 also
    the weights; stage 0 is plain data parallelism, where every GPU holds everything. Mixed
    precision (bf16/fp16) holds 2 + 2 + 12 bytes per parameter, fp32 4 + 4 + 8. With LoRA only
    `trainable_params` (the adapters) have gradients and optimizer state.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, not {stage}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype}")
    trainable = n_params if trainable_params is None else trainable_params
    weight_bytes = WORKING_BYTES[dtype]

    def per_gpu(count: int, nbytes: int, sharded: bool) -> float:
        return count * nbytes / (n_gpus if sharded else 1)

    parts = {
        "weights": per_gpu(n_params, weight_bytes, stage >= 3),
        "gradients": per_gpu(trainable, weight_bytes, stage >= 2),
        "optimizer": per_gpu(trainable, ADAM_STATE_BYTES[dtype], stage >= 1),
    }
    parts["total"] = sum(parts.values())
    return parts


def linear_weight_numel(config: PretrainedConfig) -> int:
    """6.3 (QLoRA): elements of the decoder layers' linear weights, the ones bitsandbytes stores in 4 bits.

    Per layer q_proj and o_proj (d x d), k_proj and v_proj (d x kv width under GQA), gate/up/down
    (d x intermediate each). Biases, norms, the embedding and the (tied) output layer stay unquantised.
    """
    d, f = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    return config.num_hidden_layers * (2 * d * d + 2 * d * kv + 3 * d * f)


def weight_bytes_4bit(config: PretrainedConfig) -> float:
    """6.3 (QLoRA): bytes of a model loaded in 4-bit NF4: quantised linear weights plus the rest in fp32.

    The rest (embedding, norms, biases) is kept in fp32 by peft's `prepare_model_for_kbit_training`.
    """
    quantised = linear_weight_numel(config)
    return quantised * NF4_BYTES_PER_PARAM + (qwen2_parameter_formula(config) - quantised) * 4


def layer_activation_bytes_per_token(config: PretrainedConfig, dtype: str) -> int:
    """6.1.5: bytes one Qwen2 decoder layer saves for backward, per token.

    Each of the two RMSNorms keeps its input upcast to fp32, the normalised and the scaled output
    (working dtype) and one fp32 1/rms per token; attention keeps q, k, v (k and v narrow under GQA), its output and an
    fp32 log-sum-exp per head (flash/efficient SDPA, no s x s matrix); the SwiGLU MLP keeps gate,
    silu(gate), up and their product (intermediate size each).
    """
    e = WORKING_BYTES[dtype]
    d, f = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    kv = config.num_key_value_heads * (d // heads)
    norms = 2 * (4 * d + 2 * e * d + 4)
    attention = e * d + 2 * e * kv + e * d + 4 * heads
    mlp = 4 * e * f
    return norms + attention + mlp


def activation_bytes(
    config: PretrainedConfig, tokens: int, dtype: str, activation_checkpointing: bool,
) -> int:
    """6.1.5: bytes of activations saved for backward on one device (`tokens` = batch x sequence length).

    Without checkpointing every layer keeps all it saves. With checkpointing each layer keeps only
    its input (hidden size, working dtype); see `layer_backward_bytes` for what backward adds
    back. The final RMSNorm (input in fp32, normalised and scaled output) is counted in both cases.
    """
    d, e = config.hidden_size, WORKING_BYTES[dtype]
    per_layer = e * d if activation_checkpointing else layer_activation_bytes_per_token(config, dtype)
    final_norm = 4 * d + 2 * e * d
    return tokens * (config.num_hidden_layers * per_layer + final_norm)


def layer_backward_bytes(config: PretrainedConfig, tokens: int, dtype: str, activation_checkpointing: bool) -> int:
    """6.1.5: extra bytes while backward goes through one layer.

    Two gradients of intermediate size are in flight in the MLP's backward (those of silu(gate)
    and up); with checkpointing the layer's full activations are recomputed first. This happens
    after the loss buffers are freed, so it competes with them for the peak instead of adding to
    them (`MemoryEstimate.peak`).
    """
    in_flight = 2 * WORKING_BYTES[dtype] * config.intermediate_size
    recomputed = layer_activation_bytes_per_token(config, dtype) if activation_checkpointing else 0
    return tokens * (recomputed + in_flight)


def logits_bytes(config: PretrainedConfig, tokens: int, dtype: str, liger_kernel: bool = False) -> int:
    """6.1.5: bytes of logits and loss buffers at the start of backward on one device.

    transformers' causal-LM loss upcasts the logits to fp32; log_softmax keeps its fp32 output for
    backward, whose gradient and the logits' gradient are fp32 too: 12 bytes per token per
    vocabulary entry (the forward's 16-bit logits plus fp32 copy, 10 bytes, are gone by then).
    Liger's fused linear cross-entropy never builds the full logits: it works through chunks of
    about `tokens x hidden` logits, computes the hidden states' gradient in the forward pass and
    keeps an fp32 gradient of the output embedding.
    """
    d, e = config.hidden_size, WORKING_BYTES[dtype]
    if liger_kernel:
        chunk_logits = tokens * d * 4
        return chunk_logits + tokens * d * e + config.vocab_size * d * 4
    return tokens * config.vocab_size * LOSS_BYTES_PER_LOGIT


def largest_weight_numel(config: PretrainedConfig) -> int:
    """6.1.5: elements of the largest single weight matrix: the embedding for any LLM vocabulary."""
    return max(config.vocab_size * config.hidden_size, config.hidden_size * config.intermediate_size)


def optimizer_step_bytes(
    config: PretrainedConfig, trainable_params: int, dtype: str, zero_stage: int, num_gpus: int,
) -> float:
    """6.1.5: bytes that exist only while the optimizer steps.

    Mixed precision under DeepSpeed: the fp32 copy of this device's gradient partition that the
    fp32 optimizer reads (stage 0 holds all of it). fp32 with PyTorch's AdamW on a CPU: it updates one
    tensor at a time and its denominator sqrt(v)/c + eps needs two temporaries of that tensor's size
    (the largest is the embedding).
    """
    if dtype == "fp32":
        return 2 * 4 * min(largest_weight_numel(config), trainable_params)
    return trainable_params * 4 / (num_gpus if zero_stage >= 1 else 1)


def lora_trainable_params(config: PretrainedConfig, target_modules: str | list[str], r: int) -> int:
    """6.3.3: adapter parameters for `config` (model built on the meta device, no memory used)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return lora_parameter_count(model, target_modules, r)


@dataclass(frozen=True)
class MemoryEstimate:
    """6.1.5: one device's memory for one training step, in bytes, term by term."""

    weights: float
    gradients: float
    optimizer_states: float
    activations: float
    layer_backward: float
    logits: float
    optimizer_step: float

    @property
    def model_states(self) -> float:
        """Held during the whole step: weights, gradients and optimizer states."""
        return self.weights + self.gradients + self.optimizer_states

    @property
    def peak(self) -> float:
        """Model states plus the larger transient: backward (saved activations with the loss
        buffers or with one layer's backward, whichever is larger) or the optimizer step."""
        backward = self.activations + max(self.logits, self.layer_backward)
        return self.model_states + max(backward, self.optimizer_step)

    def gib(self) -> dict[str, float]:
        """Every term and the peak in GiB, rounded to 0.01, in the order a table shows them."""
        terms = {
            "weights": self.weights, "gradients": self.gradients, "optimizer_states": self.optimizer_states,
            "activations": self.activations, "layer_backward": self.layer_backward,
            "logits_and_loss": self.logits, "optimizer_step": self.optimizer_step,
            "peak": self.peak,
        }
        return {name: round(value / GIB, 2) for name, value in terms.items()}


def estimate_training_memory(
    config: PretrainedConfig,
    per_device_batch: int,
    seq_len: int,
    dtype: str = "bf16",
    zero_stage: int = 2,
    num_gpus: int = 1,
    activation_checkpointing: bool = False,
    liger_kernel: bool = False,
    trainable_params: int | None = None,
    load_in_4bit: bool = False,
) -> MemoryEstimate:
    """6.1.5: per-device memory of one training step of a Qwen2-style model, term by term.

    Gradients are counted as held through forward and backward, as under gradient accumulation
    (the chapter's GRAD_ACC=4) and DeepSpeed's gradient buffers. `trainable_params` < all
    parameters means LoRA: frozen weights still take memory; gradients and optimizer states do not.
    `load_in_4bit` is QLoRA: the frozen weights in 4-bit NF4 (`weight_bytes_4bit`), never sharded.
    """
    if load_in_4bit and trainable_params is None:
        raise ValueError("4-bit weights are frozen: QLoRA needs trainable_params (the LoRA adapters)")
    if per_device_batch <= 0 or seq_len <= 0:
        raise ValueError(f"batch and sequence length must be positive, not {per_device_batch} and {seq_len}")
    if num_gpus <= 0:
        raise ValueError(f"number of GPUs must be positive, not {num_gpus}")
    n_params = qwen2_parameter_formula(config)
    trainable = n_params if trainable_params is None else trainable_params
    states = zero_memory_per_gpu(n_params, num_gpus, zero_stage, dtype, trainable)
    # ZeRO-3 gathers each layer's full weights for its forward and backward, and holds its full
    # gradient until the reduce-scatter: one copy of the largest layer each, as DeepSpeed counts it.
    gathered = WORKING_BYTES[dtype] * largest_weight_numel(config) if zero_stage == 3 else 0
    tokens = per_device_batch * seq_len
    if load_in_4bit:
        states["weights"], gathered = weight_bytes_4bit(config), 0
    return MemoryEstimate(
        weights=states["weights"] + gathered,
        gradients=states["gradients"] + gathered,
        optimizer_states=states["optimizer"],
        activations=activation_bytes(config, tokens, dtype, activation_checkpointing),
        layer_backward=layer_backward_bytes(config, tokens, dtype, activation_checkpointing),
        logits=logits_bytes(config, tokens, dtype, liger_kernel),
        optimizer_step=optimizer_step_bytes(config, trainable, dtype, zero_stage, num_gpus),
    )


def card_memory_needed(estimate: MemoryEstimate, expandable_segments: bool = False) -> float:
    """6.1.5: bytes a card must have for this step: the allocated peak, the allocator's reserve and the CUDA context.

    The reserve factors and the context were measured on an H200 (bench/results/gpu_h200_2026-11-30.json);
    `expandable_segments` is PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, which the chapter launch sets.
    """
    factor = RESERVE_FACTOR_EXPANDABLE if expandable_segments else RESERVE_FACTOR
    return estimate.peak * factor + CUDA_CONTEXT_GIB * GIB


def fits(estimate: MemoryEstimate, gpu_memory_gib: float, expandable_segments: bool = False) -> bool:
    """6.1.5: whether a card of `gpu_memory_gib` holds the step: `card_memory_needed` within its memory."""
    return card_memory_needed(estimate, expandable_segments) <= gpu_memory_gib * GIB


def largest_fitting_batch(
    config: PretrainedConfig, gpu_memory_gib: float, seq_len: int, expandable_segments: bool = False,
    max_batch: int | None = None, **setup,
) -> int:
    """6.1.5: the largest per-device batch (at most `max_batch`) that fits the card (`fits`); 0 when not even 1 fits.

    `setup` takes the other arguments of `estimate_training_memory` (dtype, zero_stage, ...).
    """
    batch = 0
    while (max_batch is None or batch < max_batch) and fits(
            estimate_training_memory(config, batch + 1, seq_len, **setup), gpu_memory_gib, expandable_segments):
        batch += 1
    return batch


@dataclass(frozen=True)
class BatchPlan:
    """6.1.5: how a card runs the chapter's global batch: micro-batch x accumulation x GPUs.

    `peak_gib` is the modelled allocated peak (what torch.cuda.max_memory_allocated reports);
    `card_gib` what the card must have for it (`card_memory_needed`: allocator reserve and CUDA context).
    """

    per_device_batch: int
    gradient_accumulation_steps: int
    global_batch: int
    peak_gib: float
    card_gib: float


def plan_for_card(
    config: PretrainedConfig, gpu_memory_gib: float, seq_len: int, global_batch: int, num_gpus: int = 1,
    expandable_segments: bool = False, max_batch: int | None = None, **setup,
) -> BatchPlan | None:
    """6.1.5: the largest per-device batch that fits and divides the global batch, with its accumulation.

    Keeps `global_batch` = per-device batch x gradient accumulation x `num_gpus` exactly when some
    fitting batch divides it; otherwise the largest fitting batch with accumulation rounded up.
    `max_batch` caps the per-device batch (the launch scripts: the chapter's 16, the largest measured).
    None when not even batch 1 fits.
    """
    most = largest_fitting_batch(config, gpu_memory_gib, seq_len, expandable_segments, max_batch,
                                 num_gpus=num_gpus, **setup)
    if most == 0:
        return None
    per_gpu = global_batch / num_gpus
    dividing = [b for b in range(most, 0, -1) if per_gpu == int(per_gpu) and int(per_gpu) % b == 0]
    batch = dividing[0] if dividing else most
    grad_acc = max(1, -(-global_batch // (batch * num_gpus)))
    estimate = estimate_training_memory(config, batch, seq_len, num_gpus=num_gpus, **setup)
    return BatchPlan(batch, grad_acc, batch * grad_acc * num_gpus, round(estimate.peak / GIB, 2),
                     round(card_memory_needed(estimate, expandable_segments) / GIB, 2))


def dpo_model_state_bytes(config: PretrainedConfig, lora_targets: list[str] | None = None, r: int = 8) -> dict[str, int]:
    """6.4: model-state bytes of a DPO job on one GPU, no ZeRO: the policy (2 B of bf16 weight per parameter, plus
    2 B of bf16 gradient and 12 B of mixed-precision AdamW per trainable one) and the reference (full DPO: a second
    bf16 copy; LoRA: 0, it is the same weights with the adapter disabled).

    Activations and logits come on top (`llmtrain.memory`); bench/dpo_lora_vs_full.py measures both variants.
    """
    with torch.device("meta"):  # shapes only: nothing is allocated
        n = count_parameters(AutoModelForCausalLM.from_config(config))
    if lora_targets:
        return {"policy": 2 * n + 16 * lora_trainable_params(config, lora_targets, r), "reference": 0}
    return {"policy": 16 * n, "reference": 2 * n}
