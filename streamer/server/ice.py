"""ICE helpers: which host addresses to offer and which STUN/TURN servers to use."""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCIceServer


def restrict_host_candidates(addresses: list[str]) -> None:
    """Gather ICE host candidates only on ``addresses``.

    aioice always leaves 127.0.0.1 out and offers every other interface; a server meant for peers on the
    same machine (or a test) needs exactly loopback. aioice has no option for it, so the module function
    it calls is replaced, for this process.
    """
    import aioice.ice

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addresses if (use_ipv6 if ":" in a else use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


def ice_configuration(urls: list[str], username: str | None = None,
                      credential: str | None = None) -> RTCConfiguration:
    """Only the configured ICE servers: aiortc's default would contact a public STUN server."""
    servers = [RTCIceServer(urls=url, username=username if url.startswith("turn") else None,
                            credential=credential if url.startswith("turn") else None) for url in urls]
    return RTCConfiguration(iceServers=servers)


def expire_consent_after(seconds: float) -> None:
    """Close a connection whose peer stopped answering ICE consent checks after about ``seconds``.

    aioice checks consent (RFC 7675) every 5 s and gives up after 6 unanswered checks: a viewer killed
    without hanging up held its session, encoding for nobody, for about 35 s. RFC 7675 allows a shorter
    expiry; aioice has no option for it, so its module constants are set, for this process. Each check
    waits up to 0.5 s for its answer (one try, no retransmission).
    """
    import aioice.ice

    failures = 4
    aioice.ice.CONSENT_FAILURES = failures
    aioice.ice.CONSENT_INTERVAL = max(0.5, seconds / failures - 0.5)
