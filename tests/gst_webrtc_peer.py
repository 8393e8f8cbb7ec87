"""A GStreamer WebRTC peer (webrtcbin + libnice): what GStreamer-based WHIP/WHEP clients are built on.

Run under Debian's ``/usr/bin/python3`` (``gi`` does not import inside a pip venv)::

    gst_webrtc_peer.py publish URL [--seconds S]   # WHIP: a red test pattern, VP8, sendonly
    gst_webrtc_peer.py play URL [--frames N]       # WHEP: recvonly, decoded to RGB in an appsink
    gst_webrtc_peer.py play URL --audio-out FILE   # ... and Opus audio, decoded: samples to FILE
    gst_webrtc_peer.py publish URL --clip F.webm   # WHIP: a VP8 + Opus clip's packets as they are, in real time

It prints one JSON object a line on stdout: {"event": "answered", "location": ...}, {"event": "state",
...} on each connection-state change, {"event": "frame", "width", "height", "mean": [r, g, b]} for the
first ``--frames`` decoded frames (play), and {"event": "done"} or {"event": "error", "message": ...} last.
Exit status 0 only when it connected (and, playing, got the frames it wanted).

With ``--audio-out`` the player also takes the stream's sound and, for as long as ``--seconds``, reports
every frame as {"event": "video", "t": its timestamp in s, "level": mean brightness} and every decoded audio
buffer as {"event": "audio", "t": ..., "n": samples, "rate": 48000} (the float32 mono samples appended to
the file). Timestamps are webrtcbin's, after its jitter buffers, which line audio and video up by the RTCP
sender reports: when a GStreamer player would show and play them. Exit status 0 when both came.

libnice leaves loopback addresses out of its candidates; ``--ice-address`` (default 127.0.0.1) adds one
explicitly, so the peer works in a loopback-only network namespace.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import threading
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstVideo", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstVideo, GstWebRTC  # noqa: E402

VP8_CAPS = "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000"
OPUS_CAPS = "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000"
AUDIO_BRANCH = ("rtpopusdepay ! opusdec ! audioconvert ! audioresample ! audio/x-raw,format=F32LE,channels=1,"
                "rate=48000 ! appsink name=sink emit-signals=true sync=false")
PUBLISH = (
    "videotestsrc is-live=true pattern=red ! video/x-raw,width={width},height={height},framerate=15/1 "
    "! videoconvert ! vp8enc deadline=1 keyframe-max-dist=15 ! rtpvp8pay pt=96 ! " + VP8_CAPS + " "
    "! webrtcbin name=webrtc bundle-policy=max-bundle"
)


# A recorded clip sent as OBS sends its encoder's output: packets as they are, each at its time (identity sync).
PUBLISH_CLIP = (
    "filesrc location={clip} ! matroskademux name=demux "
    "demux.video_0 ! queue ! identity sync=true ! rtpvp8pay pt=96 ! " + VP8_CAPS + " ! webrtc. "
    "demux.audio_0 ! queue ! opusparse ! identity sync=true ! rtpopuspay pt=111 ! " + OPUS_CAPS + " ! webrtc. "
    "webrtcbin name=webrtc bundle-policy=max-bundle"
)


def ice_agent(webrtc: Gst.Element) -> GstWebRTC.WebRTCICE:
    """webrtcbin's ICE agent. GStreamer 1.22 leaves it a floating reference, which PyGObject takes over as
    its own: when the Python wrapper goes, the agent is freed under webrtcbin (a crash). One more reference
    (ctypes, as PyGObject has no ``g_object_ref``) keeps it alive for webrtcbin."""
    agent = webrtc.get_property("ice-agent")
    pointer = ctypes.pythonapi.PyCapsule_GetPointer
    pointer.restype, pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    gobject = ctypes.CDLL("libgobject-2.0.so.0")
    gobject.g_object_ref.restype, gobject.g_object_ref.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    gobject.g_object_ref(pointer(agent.__gpointer__, None))
    return agent


_EMIT = threading.Lock()


def emit(**event: object) -> None:
    """One JSON line (whole: the audio and video streaming threads both report)."""
    with _EMIT:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


class Peer:
    def __init__(self, mode: str, url: str, *, frames: int, ice_address: str, width: int, height: int,
                 offer_setup: str | None = None, audio_out: str | None = None, clip: str | None = None) -> None:
        self.mode = mode
        self.audio_out = open(audio_out, "wb") if audio_out else None  # noqa: SIM115 - open while playing
        self.audio_buffers = 0
        self.offer_setup = offer_setup
        self.url = url
        self.wanted = frames
        self.got = 0
        self.ok = False
        self.loop = GLib.MainLoop()
        if mode == "publish":
            launch = PUBLISH_CLIP.format(clip=clip) if clip else PUBLISH.format(width=width, height=height)
            self.pipeline = Gst.parse_launch(launch)
            self.webrtc = self.pipeline.get_by_name("webrtc")
        else:  # the decoding branch is added when webrtcbin's pad appears
            self.pipeline = Gst.Pipeline.new("play")
            self.webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
            self.webrtc.props.bundle_policy = GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE
            self.pipeline.add(self.webrtc)
        if ice_address:
            ice_agent(self.webrtc).emit("add-local-ip-address", ice_address)
        if mode == "publish":
            for index in range(2 if clip else 1):
                self.webrtc.emit("get-transceiver", index).props.direction = \
                    GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY
        else:
            self.webrtc.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY,
                             Gst.Caps.from_string(VP8_CAPS))
            if self.audio_out is not None:
                self.webrtc.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY,
                                 Gst.Caps.from_string(OPUS_CAPS))
            self.webrtc.connect("pad-added", self._on_pad)
        self.webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering)
        self.webrtc.connect("notify::connection-state", self._on_connection)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)
        self._offered = False
        self.error = ""

    # ---- signalling (WHIP/WHEP: one POST of the complete offer, no trickle) ------------------------
    def _on_negotiation_needed(self, webrtc: Gst.Element) -> None:
        promise = Gst.Promise.new_with_change_func(self._on_offer, None)
        webrtc.emit("create-offer", None, promise)

    def _on_offer(self, promise: Gst.Promise, _data: object) -> None:
        reply = promise.get_reply()  # kept while the offer is used: the offer lives in it
        offer = reply.get_value("offer")
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def _on_gathering(self, webrtc: Gst.Element, _pspec: object) -> None:
        if webrtc.props.ice_gathering_state == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not self._offered:
            self._offered = True
            sdp = webrtc.props.local_description.sdp.as_text()
            threading.Thread(target=self._post, args=(sdp,), daemon=True).start()

    def _post(self, offer: str) -> None:
        if self.offer_setup:  # claim a DTLS role of our choosing (webrtcbin itself always offers actpass)
            offer = offer.replace("a=setup:actpass", f"a=setup:{self.offer_setup}")
        request = urllib.request.Request(self.url, data=offer.encode(), method="POST",
                                         headers={"Content-Type": "application/sdp"})
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                answer, location = response.read().decode(), response.headers.get("Location")
        except (urllib.error.URLError, OSError) as exc:
            body = exc.read().decode(errors="replace") if isinstance(exc, urllib.error.HTTPError) else ""
            GLib.idle_add(self.fail, f"POST {self.url}: {exc} {body}".strip())
            return
        emit(event="answered", location=location, answer=answer)
        _, message = GstSdp.SDPMessage.new_from_text(answer)
        description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        self.webrtc.emit("set-remote-description", description, Gst.Promise.new())

    # ---- state and media ---------------------------------------------------------------------------
    def _on_connection(self, webrtc: Gst.Element, _pspec: object) -> None:
        state = webrtc.props.connection_state.value_nick
        emit(event="state", connection=state, ice=webrtc.props.ice_connection_state.value_nick)
        if state == "connected" and self.mode == "publish":
            self.ok = True
        elif state == "failed":
            GLib.idle_add(self.fail, "connection failed")

    def _on_pad(self, webrtc: Gst.Element, pad: Gst.Pad) -> None:
        if pad.direction != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps() or pad.query_caps(None)
        if caps.get_structure(0).get_string("media") == "audio":
            branch = Gst.parse_bin_from_description(AUDIO_BRANCH, True)
            self.pipeline.add(branch)
            branch.get_by_name("sink").connect("new-sample", self._on_audio)
            branch.sync_state_with_parent()
            pad.link(branch.get_static_pad("sink"))
            return
        branch = Gst.parse_bin_from_description(
            "rtpvp8depay ! vp8dec ! videoconvert ! video/x-raw,format=RGB "
            "! appsink name=sink emit-signals=true sync=false max-buffers=2 drop=true", True)
        self.pipeline.add(branch)
        branch.get_by_name("sink").connect("new-sample", self._on_sample)
        branch.sync_state_with_parent()
        pad.link(branch.get_static_pad("sink"))

    def _on_sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        video = GstVideo.VideoInfo.new_from_caps(sample.get_caps())
        width, height, stride = video.width, video.height, video.stride[0]
        buffer = sample.get_buffer()
        ok, info = buffer.map(Gst.MapFlags.READ)
        if ok:
            data = info.data
            sums = [0, 0, 0]
            step = 7  # a sparse sample of pixels is plenty for a mean colour
            count = 0
            for y in range(0, height, step):
                row = y * stride
                for x in range(0, width, step):
                    i = row + 3 * x
                    sums[0] += data[i]
                    sums[1] += data[i + 1]
                    sums[2] += data[i + 2]
                    count += 1
            buffer.unmap(info)
            self.got += 1
            if self.audio_out is not None:
                emit(event="video", t=buffer.pts / Gst.SECOND, level=round(sum(sums) / (3 * count), 2))
                self.ok = self.audio_buffers > 0
            if self.got <= self.wanted:
                emit(event="frame", width=width, height=height, mean=[round(s / count, 1) for s in sums])
            if self.got == self.wanted:
                self.ok = True
                GLib.idle_add(self.loop.quit)
        return Gst.FlowReturn.OK

    def _on_audio(self, sink: Gst.Element) -> Gst.FlowReturn:
        buffer = sink.emit("pull-sample").get_buffer()
        ok, info = buffer.map(Gst.MapFlags.READ)
        if ok:
            self.audio_out.write(info.data)
            self.audio_buffers += 1
            emit(event="audio", t=buffer.pts / Gst.SECOND, n=len(info.data) // 4, rate=48000)
            buffer.unmap(info)
        return Gst.FlowReturn.OK

    def _on_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        error, debug = message.parse_error()
        self.fail(f"{error.message} ({debug})")

    def fail(self, message: str) -> bool:
        if not self.error:
            emit(event="error", message=message)
        self.error, self.ok = message, False
        self.loop.quit()
        return False

    def run(self, seconds: float) -> bool:
        self.pipeline.set_state(Gst.State.PLAYING)
        GLib.timeout_add(int(seconds * 1000), self._timeout)
        try:
            self.loop.run()
        finally:
            self.pipeline.set_state(Gst.State.NULL)
            if self.audio_out is not None:
                self.audio_out.close()
        return self.ok

    def _timeout(self) -> bool:
        if self.mode == "play" and not self.ok:
            return self.fail(f"got {self.got} of {self.wanted} frames in time")
        self.loop.quit()
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["publish", "play"])
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=30.0, help="publish: how long; play: the time limit")
    parser.add_argument("--frames", type=int, default=10, help="play: decoded frames wanted")
    parser.add_argument("--ice-address", default="127.0.0.1")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--audio-out", default=None, help="play: take the sound too, its samples to this file")
    parser.add_argument("--clip", default=None, help="publish: this VP8 + Opus .webm instead of a test pattern")
    parser.add_argument("--offer-setup", choices=["active", "passive"], default=None,
                        help="send the offer with this DTLS setup instead of webrtcbin's actpass")
    args = parser.parse_args(argv)
    Gst.init(None)
    peer = Peer(args.mode, args.url, frames=args.frames, ice_address=args.ice_address, width=args.width,
                height=args.height, offer_setup=args.offer_setup, audio_out=args.audio_out, clip=args.clip)
    if peer.run(args.seconds):
        emit(event="done")
        return 0
    peer.fail("did not connect in time")  # emits only when nothing went wrong before
    return 1


if __name__ == "__main__":
    sys.exit(main())
