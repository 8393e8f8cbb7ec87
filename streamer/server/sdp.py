"""Checks of a peer's SDP offer before aiortc sees it."""

from __future__ import annotations


class OfferError(ValueError):
    """The client's SDP offer cannot be used (HTTP 400)."""


def check_sdp(sdp: object) -> None:
    if not isinstance(sdp, str) or not sdp.lstrip().startswith("v=0"):
        raise OfferError("malformed SDP offer: it must be SDP text starting with 'v=0'")
    if "m=" not in sdp:
        raise OfferError("malformed SDP offer: it has no media section (m=)")
