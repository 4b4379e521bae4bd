"""cdi-live services: ingest → assemble → infer → refine → serve, and the CLI."""
