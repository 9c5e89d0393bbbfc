"""The `ingest` Prefect flow, the configuration it reads, and the `vectormill` CLI."""
