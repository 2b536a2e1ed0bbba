"""Streaming: the frames topic, detect_frames runs over its offsets, and their landing metadata."""
