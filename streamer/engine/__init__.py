"""Where frames are moved between a source, the model and the sinks: the GPU worker thread, the live runtime,
the file job (no frame dropped), atomic outputs and the stop rule for jobs."""
