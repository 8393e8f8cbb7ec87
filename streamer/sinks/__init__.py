"""Where frames leave: virtual camera, preview window, files, network streams."""
