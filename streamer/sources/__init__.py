"""Where frames come in: webcams, network streams, files, a test pattern."""
