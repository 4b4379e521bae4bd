"""What crosses a boundary: the one message model (``messages``), frame encodings (``codecs``), detector
flags and masks (``detector``), files in and out (``files``, ``framefiles``, ``metadata``), the Bluesky
callback that puts a control system's runs on the wire (``bluesky``), and the real data sets every test,
benchmark, report and demo reads (``realdata``).

Imports ``shared.physics`` only (the geometry a start message carries).
"""
