"""Turning documents into chunks and chunks into vectors: the `Embedder` seam and its implementations."""
