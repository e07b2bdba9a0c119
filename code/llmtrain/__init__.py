"""Helpers for the Happy-LLM chapter 6 companion course (pretraining, SFT, LoRA with transformers).

One module per concern; each public function names the chapter section that teaches it.
"""

from llmtrain.errors import LlmtrainError

__all__ = ["LlmtrainError"]
