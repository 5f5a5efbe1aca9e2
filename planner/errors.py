"""The one error type a user can cause. The CLI turns it into one sentence and exit code 1."""


class PlannerError(Exception):
    """An invalid input or unsupported combination, described in one sentence."""
