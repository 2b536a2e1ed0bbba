"""Sensors: frames_sensor."""
