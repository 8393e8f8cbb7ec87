"""Errors a user can act on. The CLI prints their message as one line and exits nonzero."""


class PipelineError(RuntimeError):
    """A model could not be loaded or run; the message says what is wrong and how to fix it."""
