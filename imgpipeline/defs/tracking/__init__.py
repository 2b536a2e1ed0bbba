"""Tracking domain: distinct objects (tracks) and what they did (lines crossed, zones visited)."""
