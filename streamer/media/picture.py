"""How a decoded picture is meant to be shown: its rotation (display matrix) and its colour tags.

Phones store portrait video as landscape pictures plus a rotation in the display matrix; players turn the
picture when they show it. ``streamer.media.av_io.video_to_rgb`` does the same before the model sees a
frame, so the model stylizes what a person sees and the output is written upright, with no rotation tag.

Colour tags (matrix, primaries, transfer, range) say how YUV samples map to colours. Decoding to RGB
follows the frame's own tags (FFmpeg does); ``ColourTags`` carries them to the encoder, which converts
RGB back with the same matrix and range and writes the same tags, so colours do not shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import Colorspace, VideoReformatter

# AVColorSpace (frame tags) -> swscale matrix. Unlisted values fall back to swscale's default (BT.601).
_SWS_MATRIX = {1: Colorspace.ITU709, 4: Colorspace.FCC, 5: Colorspace.ITU601, 6: Colorspace.ITU601,
               7: Colorspace.SMPTE240M, 9: Colorspace.BT2020, 10: Colorspace.BT2020}
_UNSPECIFIED = 2  # AVCOL_SPC/PRI/TRC_UNSPECIFIED
_RANGE_LIMITED, _RANGE_FULL = 1, 2  # AVCOL_RANGE_MPEG, AVCOL_RANGE_JPEG


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

    def to_yuv(self, image: np.ndarray, pix_fmt: str, width: int, height: int,
               reformatter: VideoReformatter | None = None) -> av.VideoFrame:
        """An RGB ``image`` as a ``pix_fmt`` frame made with this matrix and range, carrying these tags.

        Pass the same ``reformatter`` for every frame of a stream: it keeps its scaler set up (a new one per
        frame costs about 0.8 ms at 640x360)."""
        rgb = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame = (reformatter or VideoReformatter()).reformat(
            rgb, width=width, height=height, format=pix_fmt,
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

    @classmethod
    def of(cls, frame: av.VideoFrame) -> PictureInfo:
        return cls(quarter_turns(frame), ColourTags.of(frame))
