"""The `ingest` Prefect flow, its pipeline and plan, the configuration it reads, deployments, and the
operations the command line calls (search, source checks, capacity, drift history, server runs)."""
