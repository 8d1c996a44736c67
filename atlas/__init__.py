"""Atlas: the cluster registry for many small services."""

__version__ = "0.1.0"
