"""How a decoded picture is meant to be shown: its rotation (display matrix) and its colour tags.

Phones store portrait video as landscape pictures plus a rotation in the display matrix; players turn the
picture when they show it. ``upright_rgb`` does the same before the model sees a frame, so the model
stylizes what a person sees and the output is written upright, with no rotation tag.

Colour tags (matrix, primaries, transfer, range) say how YUV samples map to colours. Decoding to RGB
follows the frame's own tags (FFmpeg does); ``ColourTags`` carries them to the encoder, which converts
RGB back with the same matrix and range and writes the same tags, so colours do not shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import av
import av.error
import numpy as np
from av.video.reformatter import Colorspace

# AVColorSpace (frame tags) -> swscale matrix. Unlisted values fall back to swscale's default (BT.601).
_SWS_MATRIX = {1: Colorspace.ITU709, 4: Colorspace.FCC, 5: Colorspace.ITU601, 6: Colorspace.ITU601,
               7: Colorspace.SMPTE240M, 9: Colorspace.BT2020, 10: Colorspace.BT2020}
_UNSPECIFIED = 2  # AVCOL_SPC/PRI/TRC_UNSPECIFIED
_RANGE_LIMITED, _RANGE_FULL = 1, 2  # AVCOL_RANGE_MPEG, AVCOL_RANGE_JPEG
MAX_PEEK_PACKETS = 300  # a file whose first 300 video packets do not decode is read with the defaults


def quarter_turns(frame: av.VideoFrame) -> int:
    """How many quarter turns counter-clockwise (0-3) a player applies to show ``frame`` upright."""
    try:
        degrees = frame.rotation
    except (AttributeError, ValueError):
        return 0
    return round((degrees or 0) / 90) % 4


def upright_size(width: int, height: int, turns: int) -> tuple[int, int]:
    """The displayed (width, height) of a ``width`` x ``height`` picture turned ``turns`` quarter turns."""
    return (height, width) if turns % 2 else (width, height)


def upright_rgb(frame: av.VideoFrame, width: int | None = None, height: int | None = None) -> np.ndarray:
    """``frame`` as RGB, turned as its display matrix says and scaled to ``width`` x ``height`` (the size
    as shown; either may be None for the frame's own)."""
    turns = quarter_turns(frame)
    shown_w, shown_h = upright_size(frame.width, frame.height, turns)
    width, height = width or shown_w, height or shown_h
    stored_w, stored_h = upright_size(width, height, turns)  # scale first: cheaper than turning big frames
    if (stored_w, stored_h) == (frame.width, frame.height):
        image = frame.to_ndarray(format="rgb24")
    else:
        image = frame.to_ndarray(format="rgb24", width=stored_w, height=stored_h)
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


@dataclass(frozen=True)
class ColourTags:
    """A video's colour description, as FFmpeg's AVColor* enum values (2 = unspecified, range 0 = unknown)."""

    colorspace: int = _UNSPECIFIED
    primaries: int = _UNSPECIFIED
    trc: int = _UNSPECIFIED
    range: int = 0

    @classmethod
    def of(cls, frame: av.VideoFrame) -> ColourTags:
        return cls(int(frame.colorspace), int(frame.color_primaries), int(frame.color_trc), int(frame.color_range))

    @property
    def tagged(self) -> bool:
        return (self.colorspace, self.primaries, self.trc) != (_UNSPECIFIED,) * 3 or self.range != 0

    @property
    def full_range(self) -> bool:
        return self.range == _RANGE_FULL

    def to_yuv(self, image: np.ndarray, pix_fmt: str, width: int, height: int) -> av.VideoFrame:
        """An RGB ``image`` as a ``pix_fmt`` frame made with this matrix and range, carrying these tags."""
        rgb = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame = rgb.reformat(width=width, height=height, format=pix_fmt,
                             dst_colorspace=_SWS_MATRIX.get(self.colorspace, Colorspace.DEFAULT),
                             dst_color_range=_RANGE_FULL if self.full_range else _RANGE_LIMITED)
        self.tag(frame)
        return frame

    def tag(self, target: av.VideoFrame | av.video.codeccontext.VideoCodecContext) -> None:
        """Write these tags onto a frame or an encoder context (which puts them in the stream's header)."""
        target.colorspace, target.color_primaries, target.color_trc = self.colorspace, self.primaries, self.trc
        target.color_range = _RANGE_FULL if self.full_range else _RANGE_LIMITED


@dataclass(frozen=True)
class PictureInfo:
    """What the first video frame of a file says about showing the rest."""

    turns: int = 0
    colour: ColourTags = ColourTags()


def first_picture(path: str | Path) -> PictureInfo:
    """Rotation and colour tags of the first decodable frame of ``path`` (defaults when none decodes).

    Opens the file on its own: the caller's container stays untouched. Not for pipes (they would lose data).
    """
    if not Path(path).is_file():
        return PictureInfo()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for packet in islice(container.demux(stream), MAX_PEEK_PACKETS):
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    continue
                for frame in frames:
                    return PictureInfo(quarter_turns(frame), ColourTags.of(frame))
    except (av.error.FFmpegError, OSError, IndexError):
        pass
    return PictureInfo()
