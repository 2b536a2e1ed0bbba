"""Jobs: detect_frames."""
