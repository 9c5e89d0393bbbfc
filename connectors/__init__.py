"""Sources of documents: the `Source` protocol and its filesystem and HTTP implementations."""
