"""The toy world's lm-eval hooks; the logic lives in llmtrain.harness (7.1)."""

from llmtrain.harness import strict_verdict, toy_world_dataset

__all__ = ["strict_verdict", "toy_world_dataset"]
