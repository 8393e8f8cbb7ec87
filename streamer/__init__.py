"""Everything around the model: sources, the runtime, the GPU worker, sinks, the server and the CLI."""
