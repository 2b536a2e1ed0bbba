"""Retention: how long the store keeps frames, annotated images, alerts' evidence, landing files and
reports, and the broker dead letters; a daily job that deletes by age and records what it deleted."""
