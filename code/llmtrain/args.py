"""6.1.5: the scripts' own flags; every TrainingArguments flag is accepted beside them.

On the scripts' training path: the four scripts parse these beside TrainingArguments or TRL's config.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass

from llmtrain.errors import LlmtrainError
from llmtrain.tokenizer import DEFAULT_SYSTEM_MESSAGE


@dataclass
class ModelArguments:
    """Which model to train: a config to start from scratch, or pretrained weights."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Folder of pretrained weights (continued pretraining, SFT)."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Folder (or config.json) to build a fresh model from (pretraining)."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer folder; defaults to config_name or model_name_or_path."}
    )
    dtype: str | None = field(
        default=None,
        metadata={"help": "dtype to load the model in; bfloat16 is the usual choice on GPUs. The chapter's name, "
                          "--torch_dtype, still works (transformers 5 renamed it dtype).",
                  "choices": ["auto", "bfloat16", "float16", "float32"], "aliases": ["--torch_dtype"]},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run Python code shipped in the model folder. Off unless you trust the folder."},
    )


# TRL's configs (DPOConfig, GRPOConfig) bring their own --trust_remote_code (same meaning, off by default)
TRLModelArguments = make_dataclass(
    "TRLModelArguments", [(f.name, f.type, f) for f in fields(ModelArguments) if f.name != "trust_remote_code"]
)


@dataclass
class DataArguments:
    """Where the data is and how it is cut."""

    train_files: list[str] = field(default_factory=list, metadata={"help": "One or more JSON-lines files."})
    block_size: int | None = field(
        default=None, metadata={"help": "Tokens per training block (default: min(1024, max positions))."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for datasets.map tokenization and grouping."}
    )
    validation_split_percentage: int = field(
        default=0, metadata={"help": "Hold out this % of blocks for eval loss and perplexity (0: none)."}
    )

    def __post_init__(self) -> None:
        """Reject impossible values when the flags are parsed, before any data is read."""
        if self.block_size is not None and self.block_size <= 0:
            raise LlmtrainError(f"--block_size must be a positive number of tokens, not {self.block_size}.")
        if self.preprocessing_num_workers is not None and self.preprocessing_num_workers < 1:
            raise LlmtrainError(f"--preprocessing_num_workers must be at least 1, not {self.preprocessing_num_workers}.")
        if not 0 <= self.validation_split_percentage < 100:
            raise LlmtrainError(f"--validation_split_percentage {self.validation_split_percentage} needs 0 <= p < 100 "
                                "(0: no held-out split).")


@dataclass
class RunArguments:
    """Run-level switches the chapter used that TrainingArguments no longer carries, plus MFU input."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start fresh in a non-empty output_dir: ignore and delete its checkpoint-* folders."},
    )
    peak_tflops: float | None = field(
        default=None,
        metadata={"help": "Per-device peak TFLOP/s for the MFU estimate (default: GPU table, or a CPU matmul)."},
    )


@dataclass
class SFTArguments:
    """6.2: supervised fine-tuning switches."""

    packing: bool = field(
        default=True,
        metadata={"help": "Padding-free packing of each batch into one row (false: pad to the longest sample)."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N conversations (the chapter hard-coded 10,000)."}
    )
    system_message: str = field(
        default=DEFAULT_SYSTEM_MESSAGE, metadata={"help": "System prompt for conversations that bring none."}
    )

    def __post_init__(self) -> None:
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise LlmtrainError(f"--max_train_samples must be at least 1, not {self.max_train_samples}.")


@dataclass
class LoraArguments:
    """6.3.5: LoRA fine-tuning through peft (the chapter's LoraConfig: r=8, alpha=32, dropout=0.1)."""

    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=32, metadata={"help": "LoRA alpha; the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: str = field(
        default="q_proj,v_proj", metadata={"help": "Comma-separated module names to adapt (the chapter: W_q, W_v)."}
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "Also save base + adapter merged into a plain model in <output_dir>/merged."}
    )
    use_qlora: bool = field(
        default=False,
        metadata={"help": "QLoRA: load the base in 4-bit NF4 (bitsandbytes, double quantisation) and train LoRA "
                          "adapters on it; implies --use_lora."},
    )

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise LlmtrainError(f"--lora_r must be at least 1, not {self.lora_r}.")
        if not 0 <= self.lora_dropout < 1:
            raise LlmtrainError(f"--lora_dropout must be in [0, 1), not {self.lora_dropout}.")
        if self.use_qlora:
            self.use_lora = True
        if not [t for t in self.lora_target_modules.split(",") if t.strip()]:
            raise LlmtrainError("--lora_target_modules is empty: name the modules to adapt, e.g. q_proj,v_proj.")
