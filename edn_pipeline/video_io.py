"""Video files through PyAV, which ships FFmpeg in its wheel: frames read and written one at a time, audio copied.

Neither side holds more than a frame (and the codec's own few), so a clip of any length streams through in constant
memory. PyAV and OpenCV are the ``video`` extra (``pip install 'edn-pipeline[video]'``), imported when a video is
first touched, so the rest of the package works without them.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .errors import EDNInputError, one_line
from .files import atomic_write
from .luminance import read_pixels

VIDEO_EXTRA = "pip install 'edn-pipeline[video]'"
# The muxer for each of files.VIDEO_SUFFIXES: an output is written in the container its name says.
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
# H.264 (VP9 in WebM, which takes no H.264), 4:4:4 at CRF 10, so that a frame decoded again keeps its L*: on
# edn-tiny's colours over a held-out photo the mean |ΔL*| is 0.36 (0.80 at 4:2:0 and CRF 17, as 4:2:0 shifts the
# lightness of saturated detail; 0.42 even lossless), for files 1.6 times as large.
ENCODERS = {"webm": ("libvpx-vp9", {"crf": "10", "b": "0"})}
DEFAULT_ENCODER = ("libx264", {"crf": "10"})
# 4:2:0, which web browsers and QuickTime need, is VideoWriter(pixel_format="yuv420p") (even sizes only).
PIXEL_FORMAT = "yuv444p"
# A whole file's frames end within a frame of the duration its header declares for them (rounding, a last frame
# shown longer); a file cut short ends earlier. Matroska and WebM declare no frame count, only that duration.
TRUNCATION_SLACK_FRAMES = 2
# AVI headers count the frames that decode to nothing (MPEG-4's packed B-frames): one fewer decoded is whole.
UNDECODED_FRAMES_ALLOWED = 1
# A frame rate given as a float is read as the nearest fraction with at most this denominator (NTSC's 30000/1001).
FPS_DENOMINATOR = 1001


def require(module: str):
    """A module of the ``video`` extra, or an ImportError in one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"videos need PyAV and OpenCV ({module} is missing): {VIDEO_EXTRA}") from None


def _message(error: Exception) -> str:
    """FFmpeg's reason without its errno and file name, on one line."""
    return one_line(getattr(error, "strerror", None) or error)


@dataclass(frozen=True)
class VideoInfo:
    """What a video file's header says about its first video stream (its size as stored, before any rotation)."""

    width: int
    height: int
    fps: Fraction
    frames: int  # 0 where the container declares none (Matroska, WebM)


@contextmanager
def _opened(path: str | os.PathLike):
    """The container and its first video stream; EDNInputError for anything FFmpeg cannot decode as a video."""
    av = require("av")
    name = os.fspath(path)
    try:
        container = av.open(name, metadata_errors="ignore")
    except FileNotFoundError:
        raise EDNInputError(f"video file not found: {name}") from None
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise EDNInputError(f"{name}: not a video FFmpeg can read ({_message(error)})") from None
    with container:
        if not container.streams.video:
            raise EDNInputError(f"{name}: has no video stream")
        stream = container.streams.video[0]
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):
            raise EDNInputError(f"{name}: is a single image ({container.format.name}), not a video")
        if stream.codec_context is None or stream.codec_context.name == "none":
            raise EDNInputError(f"{name}: its video codec cannot be decoded by this FFmpeg")
        yield container, stream


def _fps(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else Fraction(25)  # a stream that declares no rate: FFmpeg's own default


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """The header of a video file, read without decoding; EDNInputError if it is not a video FFmpeg can decode."""
    with _opened(path) as (_, stream):
        width, height = stream.codec_context.width, stream.codec_context.height
        if width < 1 or height < 1:
            raise EDNInputError(f"{os.fspath(path)}: its video stream declares no picture size")
        return VideoInfo(width, height, _fps(stream), stream.frames)


def read_video(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """The frames of a video file's first video stream, one (H, W, 3) uint8 RGB array at a time, upright.

    The whole file is checked on the way: an undecodable packet, no frames at all, or a file that ends before its
    header says (fewer frames, or less time) raises EDNInputError after the frames before it, so a writer fed from
    here never completes a partial output.
    """
    av = require("av")
    name = os.fspath(path)
    with _opened(path) as (container, stream):
        count, first, last, turns = 0, None, None, 0
        try:
            for frame in container.decode(stream):
                if count == 0:
                    turns = round((frame.rotation or 0) / 90)  # as players show it: the display matrix applied
                    first = frame.time
                pixels = frame.to_ndarray(format="rgb24")
                yield np.ascontiguousarray(np.rot90(pixels, turns)) if turns % 4 else pixels
                count, last = count + 1, frame.time
        except (av.FFmpegError, OSError) as error:
            raise EDNInputError(f"{name}: unreadable after {count} frames ({_message(error)})") from None
        _check_whole(name, container, stream, count, first, last)


def video_problem(path: str | os.PathLike) -> str | None:
    """Why a video file is not whole (so an output is redone, not skipped), or None if it is: its header reads and
    its video stream is all there, read to its end without decoding."""
    av = require("av")
    try:
        with _opened(path) as (container, stream):
            count, first, last = 0, None, None
            for packet in container.demux(stream):
                if packet.size:  # not the empty packet that ends the stream
                    count += 1
                    if packet.pts is not None:  # packets come in decoding order: the times' extremes bound them
                        time = float(packet.pts * packet.time_base)
                        first = time if first is None else min(first, time)
                        last = time if last is None else max(last, time)
            _check_whole(os.fspath(path), container, stream, count, first, last)
    except EDNInputError as error:
        return str(error)
    except (av.FFmpegError, OSError) as error:
        return _message(error)
    return None


def _check_whole(name: str, container, stream, count: int, first: float | None, last: float | None) -> None:
    """EDNInputError if ``count`` frames from ``first`` to ``last`` (their times, in seconds) are not all the video
    stream's header declares."""
    if count == 0:
        raise EDNInputError(f"{name}: has no frames")
    if stream.frames and count < stream.frames - UNDECODED_FRAMES_ALLOWED:
        raise EDNInputError(f"{name}: cut short: {count} of the {stream.frames} frames its header declares")
    declared, end, frame = _declared_seconds(container, stream), None, 1 / _fps(stream)
    if first is not None and last is not None:
        end = last - first + frame
    if end is not None and end < declared - TRUNCATION_SLACK_FRAMES * frame:
        raise EDNInputError(f"{name}: cut short: its frames end at {end:.2f} s of the {declared:.2f} s declared")


def _declared_seconds(container, stream) -> float:
    """How long the header says the video stream lasts: its own duration, Matroska's DURATION tag, or the file's
    duration when the file holds nothing else (the audio may outlast the picture); 0 when it says nothing."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION", "")
    if tag.count(":") == 2:
        hours, minutes, seconds = tag.split(":")
        try:
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            return 0.0
    if len(container.streams) == 1 and container.duration:
        return container.duration / 1_000_000  # FFmpeg's AV_TIME_BASE
    return 0.0


def _rgb24(frame) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array of a frame: PIL image, array (H, W[, C]) or tensor ([C,] H, W), as EDN reads."""
    pixels = read_pixels(frame)
    if pixels.dtype != torch.uint8:
        pixels = pixels.mul(255).round_().to(torch.uint8)
    pixels = pixels[..., :3] if pixels.shape[-1] >= 3 else pixels.expand(-1, -1, 3)
    return np.ascontiguousarray(pixels.numpy())


class VideoWriter:
    """Encodes frames one at a time into ``file`` (a seekable binary file) in the container of ``suffix``.

    The frame rate is ``fps``; the size is the first frame's. The audio streams of ``audio_from`` (a video file),
    if it has any, are copied packet by packet, interleaved with the frames by time, never re-encoded. Use it as a
    context manager: leaving it normally finishes the file, leaving it by an exception only releases it.
    """

    def __init__(
        self,
        file,
        suffix: str,
        fps: float | Fraction,
        audio_from: str | os.PathLike | None = None,
        pixel_format: str = PIXEL_FORMAT,
    ):
        self._av = require("av")
        if suffix.lower() not in MUXERS:
            raise EDNInputError(f"cannot write a {suffix!r} video; use one of {', '.join(sorted(MUXERS))}")
        fps = Fraction(fps).limit_denominator(FPS_DENOMINATOR) if isinstance(fps, float) else Fraction(fps)
        if not fps > 0:
            raise EDNInputError(f"fps must be > 0, got {fps}")
        self._fps, self._audio_from, self._pixel_format = fps, audio_from, pixel_format
        self._count, self._start_time = 0, 0
        self._container = self._av.open(file, "w", format=MUXERS[suffix.lower()])
        self._video = self._source = self._packets = self._pending = None
        self._audio: dict[int, object] = {}

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self.close()
        finally:
            self._release()

    def _release(self) -> None:
        for container in (self._source, self._container):
            if container is not None:
                try:
                    container.close()
                except (self._av.FFmpegError, OSError):
                    pass  # already failing, or already closed: the caller's exception (or none) is the news
        self._source = self._container = None

    def _start(self, width: int, height: int) -> None:
        """The streams, made at the first frame: the video stream needs its size, and all come before the header."""
        codec, options = ENCODERS.get(self._container.format.name, DEFAULT_ENCODER)
        self._video = self._container.add_stream(codec, rate=self._fps, options=dict(options))
        self._video.width, self._video.height, self._video.pix_fmt = width, height, self._pixel_format
        # Frames are converted to YUV by BT.709 (limited range) and tagged so, with sRGB's primaries and transfer
        # (what they are), so players and read_video turn them back into the same RGB.
        colour = self._av.video.reformatter
        context = self._video.codec_context
        context.colorspace, context.color_range = colour.Colorspace.ITU709, colour.ColorRange.MPEG
        context.color_primaries, context.color_trc = colour.ColorPrimaries.BT709, colour.ColorTrc.IEC61966_2_1
        if self._audio_from is not None:
            self._source = self._av.open(os.fspath(self._audio_from), metadata_errors="ignore")
            audio = list(self._source.streams.audio)
            for stream in audio:
                self._audio[stream.index] = self._container.add_stream_from_template(stream)
            if audio:
                video_in = self._source.streams.video[0] if self._source.streams.video else None
                if video_in is not None and video_in.start_time:
                    self._start_time = video_in.start_time * video_in.time_base
                self._packets = (p for p in self._source.demux(*audio) if p.dts is not None)
                self._pending = self._next_audio()

    def _mux_audio_until(self, seconds: float) -> None:
        """Copy the audio packets up to ``seconds`` of the output (the source's video start is its zero)."""
        while self._pending is not None:
            packet = self._pending
            offset = round(self._start_time / packet.time_base)
            stamp = packet.pts if packet.pts is not None else packet.dts
            if (stamp - offset) * packet.time_base > seconds:
                return
            packet.dts -= offset
            if packet.pts is not None:
                packet.pts -= offset
            packet.stream = self._audio[packet.stream.index]
            with self._writing():
                self._container.mux(packet)
            self._pending = self._next_audio()

    def _next_audio(self):
        """The source's next audio packet, or None at its end; EDNInputError if it cannot be read."""
        try:
            return next(self._packets, None)
        except (self._av.FFmpegError, OSError) as error:
            raise EDNInputError(f"{os.fspath(self._audio_from)}: unreadable audio ({_message(error)})") from None

    def write(self, frame) -> None:
        """Encode one frame: a PIL image, an (H, W[, C]) array (uint8, or float in [0, 1]) or a ([C,] H, W) tensor."""
        pixels = _rgb24(frame)
        height, width = pixels.shape[:2]
        if self._video is None:
            self._start(width, height)
        elif (width, height) != (self._video.width, self._video.height):
            first = f"{self._video.width}×{self._video.height}"
            raise EDNInputError(f"frame {self._count} is {width}×{height}; the video's frames are {first}")
        picture = self._av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(
            format=self._video.pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG"
        )
        picture.pts = self._count
        self._mux_audio_until(self._count / self._fps)
        with self._writing():
            self._container.mux(self._video.encode(picture))
        self._count += 1

    def close(self) -> None:
        """Flush the encoder, copy the rest of the audio and write the container's index."""
        if self._count == 0:
            raise EDNInputError("no frames to write: a video needs at least one")
        with self._writing():
            self._container.mux(self._video.encode())
        self._mux_audio_until(math.inf)
        with self._writing():
            self._container.close()  # writes the trailer: MP4's index of every frame
        self._container = None
        self._release()

    @contextmanager
    def _writing(self):
        """FFmpeg's failures to encode or write (a full disk, under the muxer) as the OSError a file write raises."""
        try:
            yield
        except self._av.FFmpegError as error:
            raise OSError(f"FFmpeg could not write the video: {_message(error)}") from None


def export_to_video(
    video_frames: Iterable,
    output_video_path: str | os.PathLike,
    fps: float | Fraction = 10,
    audio_from: str | os.PathLike | None = None,
    pixel_format: str = PIXEL_FORMAT,
) -> str:
    """Write frames as a video file, as diffusers' ``export_to_video`` does, streamed: frames (PIL images, arrays
    or tensors, from any iterable, a generator included) are encoded as they come, never held together.

    The container follows the file's suffix (.mp4, .mov, .mkv, .avi: H.264; .webm: VP9), 4:4:4 so that frames keep
    their L* (``pixel_format="yuv420p"`` for web browsers and QuickTime). ``audio_from`` copies the audio of a video
    file. The file appears only when complete (written beside it, then renamed), so a failure or an interruption
    leaves no partial file. Returns the path.
    """
    path = Path(output_video_path)
    with atomic_write(path) as file, VideoWriter(file, path.suffix, fps, audio_from, pixel_format) as writer:
        for frame in video_frames:
            writer.write(frame)
    return str(path)
