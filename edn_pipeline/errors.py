"""The one exception type users catch for bad input."""


class EDNInputError(ValueError):
    """Raised for input the pipeline cannot use; the message names the problem."""
