"""The one exception type headwise raises for bad input, so the CLI can print it cleanly."""


class HeadwiseError(Exception):
    """A user-facing error: the message says what was wrong and what to do next."""
