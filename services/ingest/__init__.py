"""Ingest: detector frames over ZeroMQ → per-scan HDF5 files + preview jobs on Redis Streams."""
