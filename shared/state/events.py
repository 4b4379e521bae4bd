"""Live events (the page's and API's updates): one Redis pub/sub channel, JSON messages."""

from __future__ import annotations

import json


class Events:
    """Publish an event.
    Part of ``Store``: uses its ``redis``, ``keys`` and ``settings``."""

    def publish(self, event: dict, pipe=None) -> None:
        (self.redis if pipe is None else pipe).publish(self.keys.updates, json.dumps(event))
