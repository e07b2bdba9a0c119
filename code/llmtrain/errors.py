"""The one exception type for bad input, and `run_cli`, which turns it into a clear message and exit 1 (and ends a
distributed run's process group cleanly)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("llmtrain")


class LlmtrainError(Exception):
    """Bad input or setup that the user can fix; the message says what and how."""


def run_cli(main: Callable[[], Any]) -> None:
    """6.1.5: run a script's `main`; bad input (LlmtrainError) ends as one clear log line and exit code 1.

    A `main` that returns an int uses it as the exit code. Every entry point of the course runs through
    here, so no bad input ends in a traceback. Under a launcher, every rank then waits for the others (rank 0 may
    still be merging LoRA weights) and leaves the process group: a rank that exited early with gloo's threads
    still running was killed by C++'s `terminate` (exit -6), which failed the whole launch.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s - %(name)s - %(message)s")
    try:
        code = main()
    except LlmtrainError as err:
        logger.error("%s", err)
        sys.exit(1)
    leave_process_group()
    sys.exit(code if isinstance(code, int) else 0)


def leave_process_group() -> None:
    """Wait for every rank, then destroy the default process group; nothing when no group was started."""
    distributed = sys.modules.get("torch.distributed")  # a script that never imported torch started no group
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.barrier()
        distributed.destroy_process_group()
