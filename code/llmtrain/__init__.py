"""Helpers for the Happy-LLM chapter 6 companion course (pretraining, SFT, LoRA, DPO and GRPO with transformers).

One module per concern; each public function names the chapter section that teaches it, and each module's docstring
says whether it is on the scripts' training path or a from-scratch reference the notebooks teach.
"""

import logging
import warnings
from pathlib import Path

from llmtrain.errors import LlmtrainError

# The repository root (llmtrain is installed editable from code/llmtrain), so notebooks and tests
# find data/ and artifacts/ however they are started.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# bitsandbytes (QLoRA) looks for the optional `kernels` package's faster CPU kernel when it is imported and logs a
# warning when it is missing; it then uses its own kernels. That warning would otherwise open every notebook and log.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# On a CPU with AVX-512 BF16, bitsandbytes asks the `kernels` package (a transformers dependency) for a hub kernel at
# import; offline, `kernels` warns that it skips the publisher check, then the lookup fails and bitsandbytes falls back.
logging.getLogger("kernels").setLevel(logging.ERROR)
# transformers 5 renamed the model's gradient-checkpointing property and methods (`is_gradient_checkpointing`,
# `gradient_checkpointing_enable`/`_disable` -> `activation_checkpointing...`) and warns on every call of an old name.
# Only libraries call them here (peft 0.21 in get_peft_model, TRL 1.16 around DPO's reference pass), so they are
# ignored once for scripts, notebooks and tests. The old *training argument* `--gradient_checkpointing` (warned by
# TrainingArguments, not by the model) and every other FutureWarning still show.
LIBRARY_RENAME_WARNING = r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated"
warnings.filterwarnings("ignore", message=LIBRARY_RENAME_WARNING, category=FutureWarning,
                        module="transformers.modeling_utils")

__all__ = ["LIBRARY_RENAME_WARNING", "PROJECT_ROOT", "LlmtrainError"]
