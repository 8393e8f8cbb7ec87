"""Checks of a peer's SDP offer before aiortc sees it.

Each refusal says what is wrong in one line (an HTTP 400). The limits keep aiortc's own parsing, which
runs on the event loop, cheap: a 2,000-section offer under the body limit took it seconds. ``check_sdp``
is plain CPU work; the session layer runs it on a thread.
"""

from __future__ import annotations

import re

from aiortc.codecs import CODECS
from aiortc.rtcpeerconnection import find_common_codecs
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription, parse_h264_profile_level_id

MAX_MEDIA = 8  # a browser sends 2-3 sections (audio, video, data channel)
MAX_CANDIDATES = 256  # a browser on a machine with many interfaces repeats its own in each section
MAX_LINES = 1000  # a browser's offer is 100-300 lines
MAX_CODECS = 128  # rtpmap lines in one section; Chrome's video section has about 40

MEDIA_LINE = re.compile(r"m=([^ ]+) ([0-9]+)(?:/[0-9]+)? ([A-Za-z/]+) (.+)")
H264_PROFILES = {"CONSTRAINED_BASELINE": "Constrained Baseline", "BASELINE": "Baseline", "MAIN": "Main",
                 "CONSTRAINED_HIGH": "Constrained High", "HIGH": "High", "PREDICTIVE_HIGH_444": "High 4:4:4"}
NOT_CODECS = ("rtx", "red", "ulpfec", "flexfec-03")  # repair formats, offered next to a real codec


class OfferError(ValueError):
    """The client's SDP offer cannot be used (HTTP 400)."""


def check_sdp(sdp: object) -> None:
    """Refuse an offer that is not SDP, cut off, missing what DTLS/ICE need, too large, or whose video
    has no codec in common with aiortc. Returns nothing; raises OfferError."""
    if not isinstance(sdp, str) or not sdp.lstrip().startswith("v=0"):
        raise OfferError("malformed SDP offer: it must be SDP text starting with 'v=0'")
    if "m=" not in sdp:
        raise OfferError("malformed SDP offer: it has no media section (m=)")
    if not sdp.endswith("\n"):
        last = sdp.rsplit("\n", 1)[-1]
        raise OfferError(f"malformed SDP offer: its last line {_quote(last)} is unterminated (the offer was "
                         "cut off?); every line ends with CRLF")
    lines = sdp.strip().splitlines()
    counts = {"media sections (m=)": (sum(line.startswith("m=") for line in lines), MAX_MEDIA),
              "ICE candidates": (sum(line.startswith("a=candidate:") for line in lines), MAX_CANDIDATES),
              "lines": (len(lines), MAX_LINES)}
    for what, (count, limit) in counts.items():
        if count > limit:
            raise OfferError(f"SDP offer refused: it has {count} {what}; at most {limit} are accepted")
    session, sections = _sections(lines)
    for index, section in enumerate(sections, 1):
        _check_section(index, section, session)
    _check_codecs(sdp)


def _quote(line: str, size: int = 40) -> str:
    return repr(line if len(line) <= size else line[:size] + "...")


def _sections(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    session: list[str] = []
    sections: list[list[str]] = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise OfferError(f"malformed SDP offer: line {number} {_quote(line)} is not 'x=value'")
        if line.startswith("m="):
            if not MEDIA_LINE.fullmatch(line):
                raise OfferError(f"malformed SDP offer: bad media line {_quote(line)} (expected "
                                 "'m=<media> <port> <protocol> <formats>')")
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def _check_section(index: int, section: list[str], session: list[str]) -> None:
    kind, port = section[0][2:].split(" ", 2)[:2]
    if port.split("/")[0] == "0":  # a section the peer turned off: nothing to connect
        return
    for attribute, need in (("fingerprint", "DTLS"), ("ice-ufrag", "ICE"), ("ice-pwd", "ICE")):
        if not any(line.startswith(f"a={attribute}:") for line in (*session, *section)):
            raise OfferError(f"malformed SDP offer: media section {index} ({kind}) has no a={attribute} "
                             f"(needed for {need}); the offer was cut off or is not a WebRTC offer")
    codecs = sum(line.startswith("a=rtpmap:") for line in section)
    if codecs > MAX_CODECS:
        raise OfferError(f"SDP offer refused: media section {index} has {codecs} codecs (a=rtpmap); at most "
                         f"{MAX_CODECS} are accepted")


def _check_codecs(sdp: str) -> None:
    """Every video section must offer a codec aiortc can receive and send: VP8, or H.264 (Constrained)
    Baseline with packetization-mode=1. Decided by aiortc's own negotiation (find_common_codecs)."""
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # noqa: BLE001 - aiortc's parser raises assertions, ValueError, KeyError...
        raise OfferError(f"malformed SDP offer: {exc or type(exc).__name__}") from None
    for index, media in enumerate(description.media, 1):
        if media.kind != "video" or media.port == 0 or find_common_codecs(CODECS["video"], media.rtp.codecs):
            continue
        offered = ", ".join(dict.fromkeys(_describe(c) for c in media.rtp.codecs
                                          if c.name.lower() not in NOT_CODECS)) or "none"
        accepted = ", ".join(dict.fromkeys(_describe(c) for c in CODECS["video"] if c.name.lower() != "rtx"))
        raise OfferError(f"SDP offer refused: no video codec in common (media section {index}): offered "
                         f"{offered}; accepted {accepted}")


def _describe(codec: RTCRtpCodecParameters) -> str:
    """'VP9', 'H.264 High packetization-mode=1': what a user can set in an encoder's settings."""
    if codec.name.lower() != "h264":
        return codec.name
    parameters = codec.parameters
    try:
        profile = H264_PROFILES.get(parse_h264_profile_level_id(
            str(parameters.get("profile-level-id", "42e01f")))[0].name.removeprefix("PROFILE_"), "unknown profile")
    except ValueError:
        profile = f"profile-level-id={parameters.get('profile-level-id')}"
    return f"H.264 {profile} packetization-mode={parameters.get('packetization-mode', 0)}"
