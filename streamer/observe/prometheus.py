"""The one Prometheus exporter: RunStats as text exposition format 0.0.4, for `streamer run --control-port`'s
/metrics and `streamer serve`'s /metrics alike (same names, same types; serve adds its sessions).

Names follow Prometheus' conventions: counters end in ``_total``, durations are ``_seconds`` histograms,
and where a frame was dropped is a label, not a name:

- ``streamer_frames_received_total``: frames taken in (captured from the source; received from a peer)
- ``streamer_frames_out_total``: frames the model returned and that went on to the sinks / peers
- ``streamer_frames_dropped_total{where="source|capture|sink"}`` (sink drops also carry ``sink="NAME"``)
- ``streamer_frame_errors_total``, ``streamer_reconnects_total``, ``streamer_no_signal``
- ``streamer_fps{direction="in|out"}``: frames per second over the last 2 s
- ``streamer_latency_seconds``: capture (or arrival at the server) to written / sent, histogram
- ``streamer_batch_size``, ``streamer_model_seconds``: frames per model call and its duration, histograms
- ``streamer_sink_frames_written_total{sink}``, ``streamer_sink_frames_repeated_total{sink}``,
  ``streamer_sink_errors_total{sink}``
- ``streamer_video_delay_seconds``: the video's current delay (median of the last frames' latency): what
  a sink without audio runs behind the sound (OBS's audio Sync Offset)
- ``streamer_audio_packets_total{direction="in|out"}``, ``streamer_audio_packets_dropped_total{where="source|sink"}``,
  ``streamer_audio_delay_seconds`` (current delay applied to audio), ``streamer_av_offset_seconds{sink}``
  (audio minus video at the sink, current; serve's output is ``sink="webrtc"``)
- serve only: ``streamer_sessions{kind}`` (open now), ``streamer_sessions_started_total``
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamer.observe.stats import Histogram, RunStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "streamer"


def exposition(stats: RunStats, sessions: Mapping[str, int] | None = None) -> str:
    """Every metric of ``stats`` (and, for serve, the open ``sessions`` by kind) as Prometheus text."""
    snap = stats.snapshot()
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {PREFIX}_{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}_{name} {kind}")
        for labels, value in samples:
            lines.append(f"{PREFIX}_{name}{labels} {_number(value)}")

    def histogram(name: str, help_text: str, hist: Histogram) -> None:
        lines.append(f"# HELP {PREFIX}_{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}_{name} histogram")
        for bound, count in zip(hist.buckets, hist.counts, strict=True):
            lines.append(f'{PREFIX}_{name}_bucket{{le="{bound:g}"}} {count}')
        lines.extend([f'{PREFIX}_{name}_bucket{{le="+Inf"}} {hist.count}',
                      f"{PREFIX}_{name}_sum {_number(hist.total)}", f"{PREFIX}_{name}_count {hist.count}"])

    sinks = snap["sinks"]
    dropped = [(f'{{where="{_label(where)}"}}', snap["dropped_at"].get(where, 0)) for where in ("source", "capture")
               if where in snap["dropped_at"]]
    dropped += [(f'{{where="sink",sink="{_label(name)}"}}', s["dropped"]) for name, s in sinks.items()]
    family("frames_received_total", "counter",
           "Frames taken in: captured from the source, or received from a WebRTC publisher.", [("", snap["frames_in"])])
    family("frames_out_total", "counter", "Frames the model returned.", [("", snap["frames_out"])])
    family("frames_dropped_total", "counter",
           "Frames dropped, by where: replaced in the source's reader (source), before the model took them "
           "(capture), or before a sink wrote them (sink).", dropped)
    family("frame_errors_total", "counter", "Frames the pipeline failed on (skipped).", [("", snap["frame_errors"])])
    family("reconnects_total", "counter", "Source reconnections.", [("", snap["reconnects"])])
    family("no_signal", "gauge", "1 while the source has no signal.", [("", int(snap["no_signal"]))])
    family("fps", "gauge", "Frames per second over the last 2 s.",
           [('{direction="in"}', snap["fps_in_now"]), ('{direction="out"}', snap["fps_out_now"])])
    hists = stats.histogram_copies()
    histogram("latency_seconds", "Capture (a WebRTC frame: arrival at the server) to written by a sink or sent.",
              hists["latency_seconds"])
    histogram("batch_size", "Frames per model call.", hists["batch_size"])
    histogram("model_seconds", "Seconds per model call.", hists["model_seconds"])
    family("sink_frames_written_total", "counter", "Frames written, by sink.",
           [(f'{{sink="{_label(name)}"}}', s["written"]) for name, s in sinks.items()])
    family("sink_frames_repeated_total", "counter", "Frames re-written while the source had no signal, by sink.",
           [(f'{{sink="{_label(name)}"}}', s["repeated"]) for name, s in sinks.items()])
    family("sink_errors_total", "counter", "Sink write failures, by sink.",
           [(f'{{sink="{_label(name)}"}}', s["errors"]) for name, s in sinks.items()])
    _audio(snap, family)
    if sessions is not None:
        family("sessions", "gauge", "Open WebRTC sessions by kind.",
               [(f'{{kind="{_label(kind)}"}}', count) for kind, count in sorted(sessions.items())])
        family("sessions_started_total", "counter", "Sessions accepted since start.", [("", stats.sessions_started)])
    return "\n".join(lines) + "\n"


def _audio(snap: dict, family: Any) -> None:
    audio = snap["audio"]
    seconds = (lambda ms: 0.0 if ms is None else ms / 1000)  # noqa: E731
    family("video_delay_seconds", "gauge", "The video's current delay (capture to written or sent); set OBS's "
           "audio Sync Offset to it for a sink without audio.", [("", seconds(snap["video_delay_ms"]))])
    family("audio_packets_total", "counter", "Audio packets taken from the source (in) and handed to sinks (out).",
           [('{direction="in"}', audio["packets_in"]), ('{direction="out"}', audio["packets_out"])])
    family("audio_packets_dropped_total", "counter", "Audio packets dropped at a queue's time bound (a stuck "
           "reader or sink), by where.", [('{where="source"}', audio["dropped_in_source"])]
           + [(f'{{where="sink",sink="{_label(name)}"}}', s["dropped"]) for name, s in audio["sinks"].items()])
    family("audio_delay_seconds", "gauge", "Current delay applied to audio (capture to written): it waits for "
           "its video.", [("", seconds(audio["delay_ms"]))])
    family("av_offset_seconds", "gauge", "Audio minus video at each sink, current (positive: sound late).",
           [(f'{{sink="{_label(name)}"}}', seconds(s["av_offset_ms"])) for name, s in audio["sinks"].items()])


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def merge_labelled(texts: Mapping[str, str], label: str = "replica") -> str:
    """Several servers' expositions as one: each family once (HELP, TYPE, then every server's samples), each
    sample with ``label="KEY"`` added. `streamer serve --ray`'s /metrics: the same names, per replica."""
    families: dict[str, list[str]] = {}  # name -> HELP and TYPE lines, then samples
    for key, text in texts.items():
        extra = f'{label}="{_label(key)}"'
        current: list[str] | None = None
        for line in text.splitlines():
            if line.startswith("# HELP "):
                name = line.split(" ", 3)[2]
                current = families.get(name)
                if current is None:
                    current = families[name] = [line]
                continue
            if line.startswith("# TYPE "):
                if current is not None and len(current) == 1:
                    current.append(line)
                continue
            if not line.strip() or current is None:
                continue
            sample, _, value = line.rpartition(" ")
            if sample.endswith("}"):
                sample = f"{sample[:-1]},{extra}}}"
            else:
                sample = f"{sample}{{{extra}}}"
            current.append(f"{sample} {value}")
    return "\n".join(line for lines in families.values() for line in lines) + "\n"
