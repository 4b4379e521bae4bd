"""Physics of Bragg CDI as pure functions on arrays, and ``errors.InputError`` for input a caller can
correct. Imports nothing of ours outside ``shared.physics``: everything else stands on it."""
