"""The `vectormill` command line (console script `vectormill` → `vectormill.cli.main:main`)."""
