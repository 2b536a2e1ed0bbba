"""imgpipeline: a Dagster code location for real-time image analytics."""

__version__ = "0.1.0"
