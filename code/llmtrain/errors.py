"""The one exception type for bad input: the scripts turn it into a clear message and exit 1."""


class LlmtrainError(Exception):
    """Bad input or setup that the user can fix; the message says what and how."""
