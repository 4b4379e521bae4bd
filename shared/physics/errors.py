"""One exception type for problems the user can fix (bad input, bad options).

Services count and report it; the CLI prints it as one line and exits with code 2.
"""


class InputError(ValueError):
    """Raised for input the caller can correct: wrong shape, NaN, unknown file type."""
