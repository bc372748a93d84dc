"""The `raise-select` command line: one module per pipeline stage, each with `register(app)`."""
