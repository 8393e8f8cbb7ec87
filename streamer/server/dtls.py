"""DTLS roles that every WebRTC peer can handshake with.

aiortc as DTLS *client* offers only ECDHE-ECDSA cipher suites. A peer with an RSA certificate (GStreamer's
webrtcbin always makes one, and with it GStreamer-based WHIP/WHEP clients) then has no suite in common and
the handshake fails right after ICE ("no shared cipher"). As DTLS *server* aiortc uses its own ECDSA
certificate, which such peers accept. So when the offer leaves the choice to us (``a=setup:actpass``) the
answer takes the server side (``a=setup:passive``) instead of aiortc's default client side (``active``).
"""

from __future__ import annotations

import re

from aiortc import RTCPeerConnection

_MEDIA = re.compile(r"(?m)^(?=m=)")
_SETUP = re.compile(r"(?m)^a=setup:([A-Za-z]+)\r?$")
_ACTIVE = re.compile(r"(?m)^a=setup:active(?=\r?$)")


def _setups(sdp: str) -> list[str | None]:
    """The setup attribute of each media section, in order (a media-level one wins over the session's)."""
    session, *media = _MEDIA.split(sdp)
    default = _SETUP.search(session)
    setups = []
    for section in media:
        found = _SETUP.search(section) or default
        setups.append(found.group(1).lower() if found else None)
    return setups


def prefer_passive_dtls(answer_sdp: str, offer_sdp: str) -> str:
    """``answer_sdp`` with ``a=setup:active`` made ``a=setup:passive`` in each media section whose offer
    said ``actpass``: aiortc, given this answer by ``setLocalDescription``, is then the DTLS server."""
    offered = _setups(offer_sdp)
    session, *media = _MEDIA.split(answer_sdp)
    for i, section in enumerate(media):
        if i < len(offered) and offered[i] == "actpass":
            media[i] = _ACTIVE.sub("a=setup:passive", section)
    return "".join([session, *media])


def dtls_failed(pc: RTCPeerConnection) -> bool:
    """ICE got through but a DTLS handshake did not (aiortc itself says so only at DEBUG level)."""
    if pc.iceConnectionState not in ("connected", "completed"):
        return False
    transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    return any(t.state == "failed" for t in transports)
