"""minipeft's version (pyproject.toml states the same); the exercises' manifests record it."""

__version__ = "0.1.0"
