"""imgpipeline: a Dagster code location for real-time image analytics."""

__version__ = "0.1.0"

import warnings

# Dagster flags parameters we rely on (backfill policies, sensor owners) as beta on every
# import; the notice says nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*is currently in beta")


class ConfigError(Exception):
    """A setting is wrong or a configured service cannot be used; the message says what to fix."""


# The source id of a record of a message that named no source (unparsable, or its source id off the
# contract) begins so (`ingest/messages.py` makes it from the message's key): the record passes the
# contract, and the alert rules never take it for a camera (`vision/alert_rules.py`).
STAND_IN_SOURCE = "unparsed-"


def is_camera(source_id) -> bool:
    """Whether a landed record's source id names a camera: not a stand-in, nor missing (older files)."""
    return isinstance(source_id, str) and not source_id.startswith(STAND_IN_SOURCE)
