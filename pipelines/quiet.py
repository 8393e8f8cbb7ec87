"""Keep the model libraries' own chatter out of what users see."""

from __future__ import annotations


def quiet_libraries() -> None:
    """diffusers' and transformers' import- and load-time chatter (torchvision hints, dtype notes) is not for
    our users; errors still raise. Call before importing diffusers' pipeline classes."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
