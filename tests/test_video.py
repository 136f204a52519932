"""Video: EDNVideoPipeline on short generated clips, video files in and out with PyAV, and ``edn colorize`` on them."""

import sys
from fractions import Fraction

import av
import numpy as np
import PIL.Image
import pytest
import torch

from edn_pipeline import EDNInputError, EDNPipeline, EDNVideoPipeline
from edn_pipeline.commands.colorize import parse_hint
from edn_pipeline.commands.edn_cli import main
from edn_pipeline.files import VIDEO_SUFFIXES
from edn_pipeline.luminance import chroma, to_lightness
from edn_pipeline.testing_utils import tiny_components
from edn_pipeline.video import colorize_video_file, video_hints
from edn_pipeline.video_io import MUXERS, VIDEO_EXTRA, export_to_video, probe_video, read_video, require

SIZE = (64, 48)  # (width, height) of the generated clips
SQUARE, SHIFT = 16, 4  # side of the bright square and how far it moves each frame, in pixels
AUDIO_RATE = 16000


def square_frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """Gray frames (uint8) of a bright square moving right over a fixed random texture (which the flow can follow)."""
    texture = (np.random.default_rng(seed).random(SIZE[::-1]) * 60 + 40).astype(np.uint8)
    frames = []
    for index in range(count):
        frame = texture.copy()
        frame[16 : 16 + SQUARE, 6 + SHIFT * index : 6 + SHIFT * index + SQUARE] = 200
        frames.append(frame)
    return frames


def write_clip(path, frames, fps=12, audio=True, codec="libx264") -> None:
    """A video file of ``frames`` with, if ``audio``, a second of AAC tone."""
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        if audio:
            sound = container.add_stream("aac", rate=AUDIO_RATE)
            sound.layout = "mono"
            tone = np.sin(np.arange(AUDIO_RATE) * 2 * np.pi * 440 / AUDIO_RATE).astype(np.float32)[None] * 0.3
            samples = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            samples.sample_rate, samples.pts = AUDIO_RATE, 0
            container.mux(sound.encode(samples))
            container.mux(sound.encode())
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.dstack([frame] * 3), format="rgb24")))
        container.mux(video.encode())


def audio_packets(path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(audio=0) if packet.size]


def mean_lightness_error(a, b) -> float:
    return float(np.abs(to_lightness(np.asarray(a)) - to_lightness(np.asarray(b))).mean())


@pytest.fixture
def video_pipe(pipe) -> EDNVideoPipeline:
    video_pipe = EDNVideoPipeline(pipe)
    video_pipe.set_progress_bar_config(disable=True)
    return video_pipe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    EDNPipeline(**tiny_components()).save_pretrained(path)
    return path


def colorize(model_dir, *args) -> int:
    return main(["colorize", *map(str, args), "--model", str(model_dir), "--steps", "2", "--threads", "1"])


class CallSpy:
    """The pipeline, recording the hints of every call (the keyframes' EDN calls)."""

    def __init__(self, pipe):
        self._pipe, self.hints = pipe, []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, image, hints=None, **kwargs):
        self.hints.append(hints)
        return self._pipe(image, hints=hints, **kwargs)


# ------------------------------------------------------------------------------------------------- frames


def test_every_frame_keeps_its_own_lightness_and_the_conventions(video_pipe):
    frames = square_frames(5)
    out = video_pipe(frames, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert len(out.frames) == 1 and len(out.frames[0]) == 5 and out.keyframes[0] == 0
    for gray, coloured in zip(frames, out.frames[0]):
        assert coloured.size == SIZE and coloured.mode == "RGB"
        assert mean_lightness_error(gray, coloured) < 0.5
    assert chroma(np.asarray(out.frames[0][2])).std() > 0  # coloured, not gray
    as_np = video_pipe(np.stack(frames), num_inference_steps=2, output_type="np", return_dict=False)[0]
    as_pt = video_pipe(torch.from_numpy(np.stack(frames)), num_inference_steps=2, output_type="pt").frames
    assert as_np.shape == (1, 5, SIZE[1], SIZE[0], 3) and as_pt.shape == (1, 5, 3, SIZE[1], SIZE[0])


def test_one_seed_makes_the_same_colours_and_the_flow_carries_them(video_pipe):
    frames = square_frames(6)
    runs = [
        video_pipe(frames, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="np")
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0].frames, runs[1].frames)
    first, last = (chroma(runs[0].frames[0][i]) for i in (0, 5))

    def square_colour(ab, left):  # the mean a*b* inside the square (its edge left out) at ``left``
        return ab[18 : 14 + SQUARE, left + 2 : left + SQUARE - 2].mean(axis=(0, 1))

    now = square_colour(last, 6 + 5 * SHIFT)
    carried = np.linalg.norm(now - square_colour(first, 6))  # the square keeps the colour it had
    assert carried < 0.2 * np.linalg.norm(now - square_colour(first, 6 + 5 * SHIFT))


def test_a_hint_on_frame_0_follows_the_square_to_a_later_keyframe(pipe):
    spy = CallSpy(pipe)
    video_pipe = EDNVideoPipeline(spy, max_interval=4)
    video_pipe.set_progress_bar_config(disable=True)
    hint = (6 + SQUARE / 2, 16 + SQUARE / 2, "#ff0000")
    out = video_pipe(square_frames(5), hints=[hint], num_inference_steps=2)
    assert out.keyframes == [0, 4]
    work_w, work_h = pipe.working_size(*SIZE)
    for keyframe, hints in zip(out.keyframes, spy.hints):
        (point,) = hints
        expected_x = (hint[0] + SHIFT * keyframe) * work_w / SIZE[0]
        assert point.x == pytest.approx(expected_x, abs=1.0) and point.y == pytest.approx(
            hint[1] * work_h / SIZE[1], abs=1.0
        )
        assert point.rgb == (255, 0, 0)


def test_a_hint_names_its_frame_which_becomes_a_keyframe(pipe):
    spy = CallSpy(pipe)
    video_pipe = EDNVideoPipeline(spy)
    video_pipe.set_progress_bar_config(disable=True)
    out = video_pipe(
        square_frames(5), hints=[{"frame": 2, "x": 14, "y": 24, "color": "#00ff00"}], num_inference_steps=2
    )
    assert out.keyframes == [0, 2] and spy.hints[0] is None and len(spy.hints[1]) == 1


def test_a_cut_makes_a_new_keyframe(video_pipe):
    frames = square_frames(4) + [frame // 3 + 150 for frame in square_frames(4, seed=1)]  # another, brighter shot
    out = video_pipe(frames, num_inference_steps=2)
    assert out.keyframes == [0, 4]


def test_frames_are_streamed_one_at_a_time(video_pipe):
    consumed = []

    def frames():
        for index, frame in enumerate(square_frames(5)):
            consumed.append(index)
            yield frame

    video = video_pipe.stream(frames(), num_inference_steps=2)
    assert consumed == []  # nothing is read before the first frame is asked for
    for index, _ in enumerate(video):
        assert consumed == list(range(index + 1))
    assert video.keyframes[0] == 0 and video.fps is None


@pytest.mark.parametrize(
    "frames, hints, words",
    [
        ([], None, "no frames"),
        ([np.zeros((48, 64), np.uint8), np.zeros((40, 64), np.uint8)], None, "frame 1 is 64×40; frame 0 is 64×48"),
        (square_frames(3), [{"frame": 7, "x": 1, "y": 1, "color": "red"}], "hints name frame 7; the video has 3"),
        (square_frames(3), [{"frame": -1, "x": 1, "y": 1, "color": "red"}], "integer >= 0"),
        (square_frames(3), [{"frame": 1, "x": 99, "y": 1, "color": "red"}], "frame 1: hint 0 at (99, 1) is outside"),
        (square_frames(3), "red", "video hints must be a list"),
    ],
)
def test_bad_frames_and_hints_are_one_line_errors(video_pipe, frames, hints, words):
    with pytest.raises(EDNInputError) as error:
        video_pipe(frames, hints=hints, num_inference_steps=2)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_video_hints_forms():
    assert video_hints({3: [(1, 2, "red")]}, SIZE)[3][0].rgb == (255, 0, 0)
    by_frame = video_hints([(1, 2, "red"), {"frame": 4, "x": 5, "y": 6, "color": "#0000ff", "radius": 2}], SIZE)
    assert sorted(by_frame) == [0, 4] and by_frame[4][0].radius == 2
    assert parse_hint("12:5,6,#ff0000,3") == {"frame": 12, "x": 5.0, "y": 6.0, "color": "#ff0000", "radius": 3.0}
    assert parse_hint("5,6,#ff0000") == (5.0, 6.0, "#ff0000")


# ------------------------------------------------------------------------------------------------- files


def test_a_file_keeps_frame_count_rate_size_audio_and_lightness(video_pipe, tmp_path):
    source, output = tmp_path / "clip.mp4", tmp_path / "out" / "clip.mp4"
    write_clip(source, square_frames(6), fps=Fraction(25, 2))
    colorize_video_file(video_pipe, source, output, num_inference_steps=2)
    before, after = probe_video(source), probe_video(output)
    assert (after.width, after.height, after.fps, after.frames) == (before.width, before.height, before.fps, 6)
    assert audio_packets(output) == audio_packets(source)  # copied, not re-encoded
    for gray, coloured in zip(read_video(source), read_video(output)):
        assert mean_lightness_error(gray, coloured) < 0.5  # after H.264 at CRF 17 as well as 8 bits
    assert chroma(next(read_video(output))).std() > 0
    assert sorted(p.name for p in output.parent.iterdir()) == ["clip.mp4"]


def test_every_video_suffix_the_command_line_takes_has_a_muxer():
    assert set(MUXERS) == VIDEO_SUFFIXES


def test_export_to_video_takes_a_generator_any_size_and_no_frames_makes_no_file(tmp_path):
    frames = (np.full((25, 33, 3), 40 * i, np.uint8) for i in range(3))  # odd sizes: 4:4:4, not 4:2:0
    export_to_video(frames, tmp_path / "odd.mkv", fps=8)
    assert [frame.shape for frame in read_video(tmp_path / "odd.mkv")] == [(25, 33, 3)] * 3
    with pytest.raises(EDNInputError, match="no frames"):
        export_to_video([], tmp_path / "none.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mkv"]


def test_a_rotated_clip_is_read_upright(tmp_path):
    with av.open(str(tmp_path / "phone.mp4"), "w") as container:
        video = container.add_stream("libx264", rate=12)
        video.width, video.height, video.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        video.set_display_rotation(90)
        for frame in square_frames(2):
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.dstack([frame] * 3), format="rgb24")))
        container.mux(video.encode())
    upright = next(read_video(tmp_path / "phone.mp4"))[..., 0]
    assert upright.shape == SIZE  # turned a quarter counter-clockwise, as players show it: the square is bottom left
    assert upright[SIZE[0] - 6 - SQUARE + 2 : SIZE[0] - 6 - 2, 18 : 14 + SQUARE].min() > 150


# ------------------------------------------------------------------------------------------------- edn colorize


def bad_videos(folder) -> dict[str, str]:
    """Inputs named like videos that are not whole videos: file name -> words of its one-line error."""
    (folder / "text.mp4").write_text("not a video")
    PIL.Image.new("RGB", (8, 8)).save(folder / "image.mp4", format="PNG")
    write_clip(folder / "whole.mp4", square_frames(6), audio=False)
    data = (folder / "whole.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) * 2 // 3])
    for name, codec in (("cut.avi", "mpeg4"), ("cut.mkv", "libx264")):  # AVI declares frames, Matroska a duration
        write_clip(folder / name, square_frames(24), audio=False, codec=codec)
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) * 4 // 5])
    with av.open(str(folder / "zero.mkv"), "w") as container:  # a video stream, and only audio in it
        video = container.add_stream("libx264", rate=12)
        video.width, video.height, video.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        sound = container.add_stream("aac", rate=AUDIO_RATE)
        sound.layout = "mono"
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        samples.sample_rate, samples.pts = AUDIO_RATE, 0
        container.mux(sound.encode(samples))
        container.mux(sound.encode())
    write_clip(folder / "codec.mkv", square_frames(3), audio=False, codec="mpeg4")
    data = (folder / "codec.mkv").read_bytes()
    (folder / "codec.mkv").write_bytes(data.replace(b"V_MPEG4/ISO/ASP", b"V_NOPE!/ISO/ASP"))  # a codec none knows
    (folder / "whole.mp4").unlink()
    return {
        "text.mp4": "not a video FFmpeg can read",
        "image.mp4": "is a single image",
        "truncated.mp4": "not a video FFmpeg can read",
        "cut.avi": "cut short: 1 of the 24 frames its header declares",
        "cut.mkv": "cut short: its frames end at",
        "zero.mkv": "has no frames",
        "codec.mkv": "cannot be decoded",
    }


def test_bad_videos_fail_alone_in_one_line_and_leave_no_file(model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    expected = bad_videos(folder)
    write_clip(folder / "good.mp4", square_frames(4))
    PIL.Image.fromarray(square_frames(1)[0]).save(folder / "photo.png")
    out = tmp_path / "out"
    assert colorize(model_dir, folder, "--out", out) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == f"edn: {len(expected)} of {len(expected) + 2} inputs failed"
    for name, words in expected.items():
        (line,) = [line for line in lines if f"/{name}:" in line]
        assert line.startswith("edn: skipped ") and words in line, line
    assert sorted(p.name for p in out.iterdir()) == ["good.mp4", "photo.png"]  # no partial or temporary file


def test_images_and_videos_in_one_command_with_a_frame_hint_and_resume(model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "reel").mkdir(parents=True)
    write_clip(folder / "reel" / "clip.mov", square_frames(5))
    PIL.Image.fromarray(square_frames(1)[0]).save(folder / "photo.png")
    out = tmp_path / "out"
    assert colorize(model_dir, folder, "--out", out, "--hint", "2:14,24,#ff0000", "--hint", "3,3,#0000ff") == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.*")) == ["photo.png", "reel/clip.mov"]
    assert probe_video(out / "reel" / "clip.mov").frames == 5 and audio_packets(out / "reel" / "clip.mov")
    stale = out / "reel" / ".clip.mov.abcd1234.tmp"
    stale.write_bytes(b"partial")
    capsys.readouterr()
    assert colorize(model_dir, folder, "--out", out, "--hint", "2:14,24,#ff0000") == 0
    err = capsys.readouterr().err
    assert "removed 1 temporary file(s)" in err and "skipping 2 already colourised" in err and not stale.exists()
    (out / "reel" / "clip.mov").write_bytes((out / "reel" / "clip.mov").read_bytes()[:-200])
    assert colorize(model_dir, folder, "--out", out) == 0
    assert "redoing" in capsys.readouterr().err and probe_video(out / "reel" / "clip.mov").frames == 5


def test_an_interrupted_video_leaves_no_file_and_a_rerun_finishes_it(model_dir, tmp_path, monkeypatch, capsys):
    write_clip(tmp_path / "clip.mp4", square_frames(5))
    out = tmp_path / "out"
    real_output = EDNVideoPipeline._output
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_output(*args)

    monkeypatch.setattr(EDNVideoPipeline, "_output", staticmethod(interrupted))
    assert colorize(model_dir, tmp_path / "clip.mp4", "--out", out) == 130
    assert list(out.iterdir()) == []
    monkeypatch.setattr(EDNVideoPipeline, "_output", staticmethod(real_output))
    assert colorize(model_dir, tmp_path / "clip.mp4", "--out", out) == 0
    assert [p.name for p in out.iterdir()] == ["clip.mp4"] and probe_video(out / "clip.mp4").frames == 5


def test_without_the_video_extra_the_package_works_and_videos_are_one_usage_error(
    model_dir, tmp_path, monkeypatch, capsys, pipe
):
    write_clip(tmp_path / "clip.mp4", square_frames(2), audio=False)
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    with pytest.raises(ImportError, match="edn-pipeline\\[video\\]"):
        require("av")
    assert colorize(model_dir, tmp_path / "clip.mp4", "--out", tmp_path / "out") == 2
    assert capsys.readouterr().err.strip() == f"edn: videos need PyAV and OpenCV (av is missing): {VIDEO_EXTRA}"
    assert pipe(square_frames(1)[0], num_inference_steps=2).images[0].size == SIZE
