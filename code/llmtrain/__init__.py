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
# peft 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 renamed; every get_peft_model then warns
# about a name only peft uses. Ignored here, once for scripts, notebooks and tests; every other FutureWarning shows.
PEFT_OLD_ATTRIBUTE_WARNING = "`is_gradient_checkpointing` is deprecated"
warnings.filterwarnings("ignore", message=PEFT_OLD_ATTRIBUTE_WARNING, category=FutureWarning)

__all__ = ["PEFT_OLD_ATTRIBUTE_WARNING", "PROJECT_ROOT", "LlmtrainError"]
