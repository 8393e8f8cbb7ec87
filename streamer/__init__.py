"""Everything around the model: sources, the runtime, the GPU worker, sinks, the server and the CLI."""

__version__ = "0.1.0"
