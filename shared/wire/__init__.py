"""What crosses a boundary: the one message model (``messages``), frame encodings (``codecs``), detector
flags and masks (``detector``), files in and out (``files``, ``framefiles``, ``metadata``), and the Bluesky
callback that puts a control system's runs on the wire (``bluesky``).

Imports ``shared.physics`` only (the geometry a start message carries).
"""
