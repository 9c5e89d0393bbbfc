"""Durable vector storage: FAISS + SQLite metadata, a write-ahead log, checkpoints and replicas."""
