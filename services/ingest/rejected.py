"""Why a message is dropped."""


class Rejected(Exception):
    """A message that is dropped; its text is the counted reason (``rejected:<reason>`` in /metrics)."""
