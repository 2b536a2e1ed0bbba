"""Producers: images, watched folders, video files and RTSP streams."""
