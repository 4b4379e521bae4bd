"""Gateway: REST for scripts (and, later, the operators' live page)."""
