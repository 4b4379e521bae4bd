"""A simulated beamline: plays scans to the ingest over the native protocol."""
