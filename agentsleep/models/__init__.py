"""Models: the embedded default, loading any HF directory, the version registry, growth."""
