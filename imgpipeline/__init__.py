"""imgpipeline: a Dagster code location for real-time image analytics."""

__version__ = "0.1.0"

import warnings

# Dagster flags parameters we rely on (backfill policies, sensor owners) as beta on every
# import; the notice says nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*is currently in beta")


class ConfigError(Exception):
    """A setting is wrong or a configured service cannot be used; the message says what to fix."""
