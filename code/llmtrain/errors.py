"""The one exception type for bad input, and `run_cli`, which turns it into a clear message and exit 1."""

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
    here, so no bad input ends in a traceback.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s - %(name)s - %(message)s")
    try:
        code = main()
    except LlmtrainError as err:
        logger.error("%s", err)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
