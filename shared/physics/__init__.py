"""Physics of Bragg CDI as pure functions on arrays."""
