"""The one error publishing raises."""


class HubPublishError(RuntimeError):
    """Publishing failed; the message says what was wrong and what to do (it never contains the token)."""
