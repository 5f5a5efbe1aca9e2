"""The one error type a user can cause. The CLI turns it into one sentence and exit code 1."""


class PlannerError(Exception):
    """An invalid input or unsupported combination, described in one sentence."""


# A message longer than this is cut with "..." (a bad value from a config can be megabytes long).
MAX_MESSAGE_CHARS = 400


def one_sentence(message: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` on one line (whitespace runs collapsed), at most ``limit`` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
