"""The ``cdi-live`` command: one module per subcommand."""
