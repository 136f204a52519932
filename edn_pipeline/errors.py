"""The one exception type users catch for bad input, and the one-line form every message takes."""

# Longer messages (a whole stack of a library's text) stop being readable on one line.
MESSAGE_LIMIT = 300


class EDNInputError(ValueError):
    """Raised for input the pipeline cannot use; the message names the problem."""


def one_line(error: BaseException | str) -> str:
    """An exception's message (or a text) on one line, at most MESSAGE_LIMIT characters; an exception's type
    name when it has no message."""
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."
