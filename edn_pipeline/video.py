"""EDNVideoPipeline: colourise film without flicker, EDN colouring keyframes and optical flow carrying their colour.

EDN keeps each frame's CIE L* exactly, so only chroma can flicker, and it does when every frame is colourised on its
own. Here EDN colourises a keyframe (with one seed for the whole clip); its a*b*, at a moderate size, is carried to
each next frame along the DIS optical flow (OpenCV) of their lightness. Forward-backward consistency finds what the
flow cannot carry (what comes into view, the frame's edges): it is filled edge-aware from its neighbours
(:func:`~edn_pipeline.propagation.propagate`) and recoloured by EDN once too much of the frame is such guesswork.
A new keyframe comes at a shot cut (the lightness histogram jumps), where the flow fails, at a hinted frame and after
``max_interval`` frames. Hints name their frame and follow their object along the flow through the shot. Every
output frame is the carried chroma composed on that frame's own L* (:func:`~edn_pipeline.luminance.compose`).

Frames stream through: one is read, coloured and given out before the next is read, so memory does not grow with
the clip. File input and output are :mod:`edn_pipeline.video_io` (PyAV).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput

from .errors import EDNInputError
from .hints import HintPoint, parse_hints
from .image_processor import EDNImageProcessor
from .luminance import compose, lab_chroma, lightness, read_pixels
from .pipeline_edn import EDNPipeline
from .propagation import propagate
from .video_io import export_to_video, probe_video, read_video, require

# The carried chroma and the flow are at most this many pixels on the longer side: chroma is smooth, and at 256 px
# a DIS flow takes about 20 ms on one core and the Levin fill of a frame's new edge about 70 ms.
FLOW_SIDE = 256
# DIS's medium preset, refined down to full resolution (its own stops at half): on a pan over Urban100's facades
# that cuts the pixels failing the consistency check from 12 % to 2 % a frame, for 20 ms instead of 7.
DIS_FINEST_SCALE = 0
# A cut: the lightness histograms (HISTOGRAM_BINS bins) of consecutive frames differ by more than this share of
# their pixels (total variation distance). The benchmark's pans and zooms over one photo change it by 0.03 a frame
# at most; between two of the 18 held-out photos it is 0.12-0.8 (median 0.41). A cut under it still fails the flow.
CUT_DISTANCE = 0.2
HISTOGRAM_BINS = 32
# Forward-backward consistency (Sundaram, Brox & Keutzer, ECCV 2010): a pixel whose two flows do not cancel to
# within CONSISTENCY_RELATIVE of their squared lengths plus CONSISTENCY_PIXELS² is one the flow cannot carry.
CONSISTENCY_RELATIVE = 0.01
CONSISTENCY_PIXELS = 0.5
# More than this share of a frame the flow cannot carry: the flow failed (a cut the histogram missed, a flash), so
# the frame is a keyframe. Between any two of the held-out photos DIS fails on 86 % of the pixels or more.
MAX_LOST = 0.5
# Default share of a frame whose chroma may be a fill rather than EDN's before EDN recolours those pixels. Every
# new pixel is recoloured once whatever the share, so it sets how many EDN calls that takes: with edn-tiny on the
# benchmark's pans and zooms, a tenth took 3-5 times the calls of a half for the same flicker and 0.05 dB less.
MAX_UNSURE = 0.5
# Default frames between keyframes at most (2 s at 24 frames/s). Carried colour drifts from what EDN would give where
# colour follows light rather than surface: on a real clip of the rotating Earth (the benchmark's), 0.006 dB of PSNR
# a frame, 0.5 dB by frame 90 with no new keyframe.
MAX_INTERVAL = 48
# Recoloured pixels blend into the carried ones over a Gaussian of this many flow pixels, so no seam shows.
FEATHER_SIGMA = 2.0
OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class EDNVideoPipelineOutput(BaseOutput):
    """Output of :class:`EDNVideoPipeline`, in diffusers' video convention.

    Args:
        frames: one video: ``frames[0]`` is its list of PIL images; for ``output_type`` "np" / "pt" an array
            (1, F, H, W, 3) / tensor (1, F, 3, H, W) in [0, 1].
        keyframes: the frames EDN colourised (all of a frame, or what the flow could not carry), in order.
    """

    frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor
    keyframes: list[int]


class ColourisedFrames(Iterator):
    """The colourised frames of one video, made one at a time as they are asked for.

    ``keyframes`` lists the frames EDN colourised so far; ``fps`` is the source file's frame rate (None for frames
    given in memory); ``frame_count`` the number of frames, where known in advance.
    """

    def __init__(self, frames: Iterator, fps: Fraction | None, frame_count: int | None, keyframes: list[int]):
        self._frames, self.fps, self.frame_count, self.keyframes = frames, fps, frame_count, keyframes

    def __next__(self):
        return next(self._frames)

    def close(self) -> None:
        """Stop early: the source (a file, a generator) is released now rather than when collected."""
        self._frames.close()


def video_hints(hints, size: tuple[int, int]) -> dict[int, list[HintPoint]]:
    """Hints of a video by frame: validated points in input pixels of a frame of ``size`` (width, height).

    ``hints`` is a list whose entries are a point as for an image (``(x, y, colour[, radius])`` or a dict), which
    applies to the first frame, or a dict that names its frame (``{"frame": 12, "x": 40, "y": 30, "color":
    "#f5c400"}``); or a mapping ``{frame: [points]}``.
    """
    if hints is None:
        return {}
    if isinstance(hints, Mapping):
        if not all(isinstance(points, (list, tuple)) for points in hints.values()):
            raise EDNInputError("video hints {frame: points} need a list of points for every frame")
        entries = [(frame, point) for frame, points in hints.items() for point in points]
    elif isinstance(hints, (list, tuple)):
        entries = [
            (point["frame"], {k: v for k, v in point.items() if k != "frame"})
            if isinstance(point, Mapping) and "frame" in point
            else (0, point)
            for point in hints
        ]
    else:
        raise EDNInputError(
            f"video hints must be a list of points (a dict may name its 'frame') or a mapping {{frame: points}}, got "
            f"{type(hints).__name__}"
        )
    by_frame: dict[int, list] = {}
    for frame, point in entries:
        if isinstance(frame, bool) or not isinstance(frame, numbers.Integral) or frame < 0:
            raise EDNInputError(f"a hint's frame must be an integer >= 0, got {frame!r}")
        by_frame.setdefault(int(frame), []).append(point)
    parsed = {}
    for frame, points in sorted(by_frame.items()):
        try:
            parsed[frame] = parse_hints(points, size)
        except EDNInputError as error:
            raise EDNInputError(f"frame {frame}: {error}") from None
    return parsed


def _flow_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, FLOW_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _histogram(gray: np.ndarray) -> np.ndarray:
    counts = np.bincount((gray.astype(np.uint16) * HISTOGRAM_BINS >> 8).ravel(), minlength=HISTOGRAM_BINS)
    return counts / gray.size


def _sample(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``field`` (h, w, c) read bilinearly at the points (x, y) (same shapes), edges repeated."""
    cv2 = require("cv2")
    x, y = x.astype(np.float32), y.astype(np.float32)
    return cv2.remap(field, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _inconsistent(there: np.ndarray, back: np.ndarray) -> np.ndarray:
    """Where a flow ``there`` and the reverse flow ``back`` read at its end do not cancel (Sundaram et al.)."""
    mismatch = ((there + back) ** 2).sum(-1)
    return mismatch > CONSISTENCY_RELATIVE * ((there**2).sum(-1) + (back**2).sum(-1)) + CONSISTENCY_PIXELS**2


class _Shot:
    """What is carried from frame to frame: chroma, which of it is guesswork, the hints, the last frame's gray."""

    def __init__(self, ab: np.ndarray, gray: np.ndarray, hints: list[HintPoint]):
        self.ab, self.gray, self.hints = ab, gray, hints
        self.unsure = np.zeros(gray.shape, bool)
        self.since_keyframe = 0


@dataclass
class _Job:
    """One video's settings: what every keyframe's EDN call gets (one seed for all), and the keyframes so far."""

    call: dict
    seed_state: torch.Tensor
    seed_device: torch.device
    output_type: str
    keyframes: list[int]
    size: tuple[int, int] | None = None  # (width, height) of the frames, from the first


class EDNVideoPipeline:
    r"""Colourise a video with an :class:`~edn_pipeline.EDNPipeline`, temporally consistent.

    Args:
        pipe: the EDN pipeline that colourises keyframes (its device, dtype and scheduler are used).
        max_interval: frames between keyframes at most.
        max_unsure: share of a frame whose colour may be filled in rather than EDN's before EDN recolours it.
        cut_distance: lightness-histogram change between consecutive frames that counts as a shot cut.
    """

    def __init__(
        self,
        pipe: EDNPipeline,
        max_interval: int = MAX_INTERVAL,
        max_unsure: float = MAX_UNSURE,
        cut_distance: float = CUT_DISTANCE,
    ):
        if isinstance(max_interval, bool) or not isinstance(max_interval, int) or max_interval < 1:
            raise EDNInputError(f"max_interval must be an integer >= 1, got {max_interval!r}")
        for name, value in (("max_unsure", max_unsure), ("cut_distance", cut_distance)):
            if not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise EDNInputError(f"{name} must be a number in (0, 1], got {value!r}")
        self.pipe, self.max_interval, self.max_unsure, self.cut_distance = pipe, max_interval, max_unsure, cut_distance
        self._progress_bar_config: dict = {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None = None, **kwargs):
        """The video pipeline of ``EDNPipeline.from_pretrained(...)`` (edn-tiny when no model is named)."""
        return cls(EDNPipeline.from_pretrained(pretrained_model_name_or_path, **kwargs))

    def set_progress_bar_config(self, **kwargs) -> None:
        """tqdm options of the bar over frames, as diffusers' pipelines take them (``disable=True`` hides it)."""
        self._progress_bar_config = kwargs

    # ----------------------------------------------------------------------------------------------- call

    def __call__(
        self,
        frames,
        prompt: str | None = None,
        hints=None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **kwargs,
    ):
        """Colourise all ``frames`` and return them together; :meth:`stream` gives them one at a time instead.

        Takes what :meth:`stream` takes. Returns an :class:`EDNVideoPipelineOutput`, or ``(frames,)`` with
        ``return_dict=False``.
        """
        video = self.stream(frames, prompt=prompt, hints=hints, generator=generator, output_type=output_type, **kwargs)
        coloured = list(video)
        if output_type == "np":
            coloured = np.stack(coloured)[None]
        elif output_type == "pt":
            coloured = torch.stack(coloured)[None]
        else:
            coloured = [coloured]
        if not return_dict:
            return (coloured,)
        return EDNVideoPipelineOutput(frames=coloured, keyframes=video.keyframes)

    def stream(
        self,
        frames,
        prompt: str | None = None,
        hints=None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        **kwargs,
    ) -> ColourisedFrames:
        """The colourised frames, made one at a time as they are iterated: constant memory at any clip length.

        Args:
            frames: a video file's path (read with PyAV), a list of frames, an array (F, H, W[, C]) or tensor
                (F, [C,] H, W), or any iterable of frames, a generator included (read lazily). A frame is what
                :class:`~edn_pipeline.EDNPipeline` takes as an image (PIL, array, tensor); all of one size.
            prompt: the text of every keyframe's colourisation.
            hints: colour hints that name their frame (:func:`video_hints`); each follows its object along the
                flow until it leaves the view or the shot ends.
            generator: seeds every keyframe alike (its state at the call is reused for each); None draws a seed.
            output_type: "pil", "np" ((H, W, 3) float arrays in [0, 1]) or "pt" ((3, H, W) tensors).
            kwargs: the other arguments of :meth:`EDNPipeline.__call__` (``num_inference_steps``, ``strength``,
                ``guidance_scale``, ``negative_prompt``, ...), for every keyframe.
        """
        if output_type not in OUTPUT_TYPES:
            raise EDNInputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        require("cv2")
        fps = frame_count = None
        if isinstance(frames, (str, os.PathLike)):
            info = probe_video(frames)
            fps, frame_count, source = info.fps, info.frames or None, read_video(frames)
        elif isinstance(frames, (np.ndarray, torch.Tensor)):
            if frames.ndim not in (3, 4):
                shape = tuple(frames.shape)
                raise EDNInputError(f"frames as an array need shape (F, H, W[, C]) or (F, [C,] H, W), got {shape}")
            frame_count, source = len(frames), iter(frames)
        elif isinstance(frames, Iterable):
            frame_count, source = (len(frames) if isinstance(frames, (list, tuple)) else None), iter(frames)
        else:
            raise EDNInputError(f"frames must be a video file, a list, an array or an iterable, got {type(frames)}")
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        job = _Job(dict(prompt=prompt, **kwargs), generator.get_state(), generator.device, output_type, [])
        return ColourisedFrames(self._colourise(source, hints, job, frame_count), fps, frame_count, job.keyframes)

    # ----------------------------------------------------------------------------------------------- frames

    def _colourise(self, source: Iterator, hints, job: _Job, frame_count: int | None) -> Iterator:
        from tqdm.auto import tqdm

        cv2 = require("cv2")
        flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow.setFinestScale(DIS_FINEST_SCALE)
        device = self.pipe._execution_device
        shot = previous_histogram = None
        bar = tqdm(total=frame_count, unit="frame", desc="colourising video", **self._progress_bar_config)
        try:
            for index, frame in enumerate(source):
                pixels = read_pixels(frame)
                size = (pixels.shape[1], pixels.shape[0])
                if job.size is None:
                    job.size, small_size, schedule = size, _flow_size(*size), video_hints(hints, size)
                    if frame_count is not None and schedule and max(schedule) >= frame_count:
                        raise EDNInputError(f"hints name frame {max(schedule)}; the video has {frame_count} frames")
                elif size != job.size:
                    first = "×".join(map(str, job.size))
                    raise EDNInputError(f"frame {index} is {size[0]}×{size[1]}; frame 0 is {first}")
                l_star = lightness(pixels.to(device))
                gray = (EDNImageProcessor.gray(l_star, small_size) * 255).round().to(torch.uint8).cpu().numpy()
                histogram = _histogram(gray)
                change = 1.0 if previous_histogram is None else np.abs(histogram - previous_histogram).sum() / 2
                previous_histogram, new_hints = histogram, schedule.pop(index, [])
                if shot is None or change > self.cut_distance:
                    shot = self._keyframe(job, index, l_star, gray, new_hints)
                elif new_hints:  # a hinted frame is a keyframe, and the shot's earlier hints still count
                    forward, backward = flow.calc(shot.gray, gray, None), flow.calc(gray, shot.gray, None)
                    moved = self._move_hints(shot.hints, forward, backward, job.size)
                    shot = self._keyframe(job, index, l_star, gray, moved + new_hints)
                else:
                    shot = self._carry(job, index, l_star, gray, shot, flow)
                bar.update()
                yield self._output(l_star, shot.ab, job.output_type)
        finally:
            bar.close()
        if job.size is None:
            raise EDNInputError("no frames: a video needs at least one")
        if schedule:
            raise EDNInputError(f"hints name frame {min(schedule)}; the video has {index + 1} frames")

    def _carry(self, job: _Job, index: int, l_star, gray: np.ndarray, shot: _Shot, flow) -> _Shot:
        """The shot moved to the frame of ``gray`` along the flow; a keyframe, or EDN's colour where it falls short."""
        forward, backward = flow.calc(shot.gray, gray, None), flow.calc(gray, shot.gray, None)
        height, width = gray.shape
        grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        source_x, source_y = grid_x + backward[..., 0], grid_y + backward[..., 1]
        outside = (source_x < 0) | (source_x > width - 1) | (source_y < 0) | (source_y > height - 1)
        lost = outside | _inconsistent(backward, _sample(forward, source_x, source_y))
        if lost.mean() > MAX_LOST:  # the flow failed: nothing, hints included, is known to have moved along it
            return self._keyframe(job, index, l_star, gray, [])
        hints = self._move_hints(shot.hints, forward, backward, job.size)
        if shot.since_keyframe + 1 >= self.max_interval:
            return self._keyframe(job, index, l_star, gray, hints)
        ab = _sample(shot.ab, source_x, source_y)
        unsure = (_sample(shot.unsure.astype(np.float32), source_x, source_y) > 0.5) | lost
        shot.gray, shot.hints, shot.since_keyframe = gray, hints, shot.since_keyframe + 1
        if unsure.mean() > self.max_unsure:  # EDN colours what was guessed, blended in
            job.keyframes.append(index)
            fresh = self._edn_chroma(job, l_star, gray.shape, hints)
            weight = np.maximum(require("cv2").GaussianBlur(unsure.astype(np.float32), (0, 0), FEATHER_SIGMA), unsure)
            shot.ab, shot.unsure = ab + weight[..., None] * (fresh - ab), np.zeros_like(unsure)
        else:
            shot.ab = propagate(gray / 255.0, ~lost, ab).astype(np.float32) if lost.any() else ab
            shot.unsure = unsure
        return shot

    def _keyframe(self, job: _Job, index: int, l_star, gray: np.ndarray, hints: list[HintPoint]) -> _Shot:
        job.keyframes.append(index)
        return _Shot(self._edn_chroma(job, l_star, gray.shape, hints), gray, hints)

    def _edn_chroma(self, job: _Job, l_star: torch.Tensor, shape: tuple[int, int], hints: list[HintPoint]):
        """EDN's a*b* (h, w, 2) of a frame at the flow size ``shape``, colourised at the model's working size.

        The model sees the frame's L* at its working size, as it would given the whole frame, with the hints moved
        there; its output at that size, composed on that L*, keeps the decoded chroma as it is.
        """
        width, height = job.size
        work = self.pipe.working_size(width, height)
        gray = EDNImageProcessor.gray(l_star, work).cpu().numpy()
        scale_x, scale_y = work[0] / width, work[1] / height
        points = [
            replace(h, x=h.x * scale_x, y=h.y * scale_y, radius=None if h.radius is None else h.radius * scale_x)
            for h in hints
        ]
        generator = torch.Generator(device=job.seed_device)
        generator.set_state(job.seed_state)
        rgb = self.pipe(gray, hints=points or None, generator=generator, output_type="pt", **job.call).images
        ab = F.interpolate(lab_chroma(rgb.float()), size=shape, mode="bilinear", antialias=True)[0]
        return np.ascontiguousarray(ab.permute(1, 2, 0).cpu().numpy())

    @staticmethod
    def _move_hints(hints: list[HintPoint], forward: np.ndarray, backward: np.ndarray, size) -> list[HintPoint]:
        """The hints where the flow takes them; one whose spot leaves the view or is hidden is dropped."""
        if not hints:
            return []
        (width, height), (small_h, small_w) = size, forward.shape[:2]
        scale_x, scale_y = small_w / width, small_h / height
        # Hints are continuous coordinates (pixel i spans [i, i + 1)); the flow's array holds pixel centres.
        x = np.array([[h.x * scale_x - 0.5 for h in hints]], np.float32)
        y = np.array([[h.y * scale_y - 0.5 for h in hints]], np.float32)
        there = _sample(forward, x, y)
        to_x, to_y = x + there[..., 0], y + there[..., 1]
        inside = (to_x >= 0) & (to_x <= small_w - 1) & (to_y >= 0) & (to_y <= small_h - 1)
        seen = (inside & ~_inconsistent(there, _sample(backward, to_x, to_y)))[0]
        moved = [
            replace(h, x=h.x + float(dx) / scale_x, y=h.y + float(dy) / scale_y)
            for h, (dx, dy) in zip(hints, there[0])
        ]
        return [h for h, keep in zip(moved, seen) if keep and 0 <= h.x < width and 0 <= h.y < height]

    @staticmethod
    def _output(l_star: torch.Tensor, ab: np.ndarray, output_type: str):
        """The frame with its own L* and the carried chroma, upsampled: its lightness is the input's exactly."""
        dtype = torch.uint8 if output_type == "pil" else torch.float32
        rgb = compose(l_star, torch.from_numpy(ab).permute(2, 0, 1).to(l_star.device), dtype)
        if output_type == "pil":
            return PIL.Image.fromarray(rgb.cpu().numpy())
        if output_type == "np":
            return rgb.cpu().numpy()
        return rgb.permute(2, 0, 1)


def colorize_video_file(
    video_pipe: EDNVideoPipeline, source: str | os.PathLike, output: str | os.PathLike, **kwargs
) -> str:
    """Colourise the video file ``source`` into ``output``: the same frame count, rate and size, its audio copied.

    ``kwargs`` go to :meth:`EDNVideoPipeline.stream`. Frames stream from the file through the pipeline into the
    encoder; the output appears only when whole (written beside it, then renamed), so bad input, a failure or an
    interruption leaves no partial file. Returns the output's path.
    """
    frames = video_pipe.stream(source, output_type="pil", **kwargs)
    return export_to_video(frames, output, fps=frames.fps, audio_from=source)
