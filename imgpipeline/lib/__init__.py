"""Framework extensions: the run launcher."""
