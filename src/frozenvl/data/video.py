"""Video files -> frames, sampled at a fixed rate (1 frame per second by default, the Flamingo paper's video
protocol), with PyAV (``av``, whose wheels bundle FFmpeg: no system libraries needed).

Sampling: the times ``t_k = k / fps`` (k = 0, 1, ...) counted from the video stream's first frame, as long as
``t_k`` is not past the last frame's time; each ``t_k`` takes the frame on screen then (the last frame whose
presentation time is <= ``t_k``). A 3.5 s clip gives 4 frames at 1 FPS (0, 1, 2, 3 s) and 7 at 2 FPS.

``max_frames`` keeps that many of the sampled frames, spread evenly over the clip (``frames[int(i * n /
max_frames)]``), never the first N: a caption describes the whole clip, and the model's temporal embeddings
(``max_frames`` of them) then cover its whole length. The frame folders of the evaluation readers and the
processor subsample the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv", ".wmv")

# A frame time within this of a sampling time counts as that time (pts are rationals, read as floats).
_TIME_TOLERANCE = 1e-6


class VideoDecodeError(ValueError):
    """A video file that cannot be decoded (not a video, truncated, no video stream, no frames)."""


def is_video_file(path: object) -> bool:
    """Whether ``path`` (a str or PathLike) names a video file by its extension (``VIDEO_EXTENSIONS``)."""
    return isinstance(path, str | os.PathLike) and Path(path).suffix.lower() in VIDEO_EXTENSIONS


def find_video_file(folder: str | os.PathLike, name: str) -> Path | None:
    """The video file ``folder/name``, or ``folder/name.EXT`` for a name given without its extension (MSR-VTT's
    ``video7010``, MSVD's ``-4wsuPCjDBc_5_15``); None when there is none."""
    path = Path(folder, name)
    if path.is_file():
        return path
    for ext in VIDEO_EXTENSIONS:
        candidate = path.with_name(path.name + ext)
        if candidate.is_file():
            return candidate
    return None


def _even(items: list, count: int) -> list:
    if len(items) <= count:
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def check_sampling(fps: float, max_frames: int | None) -> None:
    """One ValueError naming the bad argument: ``fps`` must be > 0 and ``max_frames`` None or >= 1."""
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")


def read_video_frames(path: str | os.PathLike, fps: float = 1.0, max_frames: int | None = None,
                      max_pixels: int = 64_000_000) -> list[Image.Image]:
    """RGB frames of the video file ``path`` sampled at ``fps`` frames per second from its start, at most
    ``max_frames`` of them spread evenly (see the module docstring). A file that cannot be decoded is one
    :class:`VideoDecodeError` naming it; a frame size over ``max_pixels`` is refused before decoding."""
    check_sampling(fps, max_frames)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    import av

    sampled: list[Image.Image] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"video {path} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > max_pixels:
                raise VideoDecodeError(f"video {path}: frames of {width}x{height} pixels, over the limit of "
                                       f"{max_pixels}")
            start: float | None = None
            shown, shown_time = None, 0.0  # the last decoded frame: on screen until the next one's time
            k = 0  # index of the next sampling time k / fps
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                if start is None:
                    start = frame.time
                t = frame.time - start
                if shown is not None and k / fps < t - _TIME_TOLERANCE:
                    image = shown.to_image().convert("RGB")  # converted once, however many times it covers
                    while k / fps < t - _TIME_TOLERANCE:
                        sampled.append(image)
                        k += 1
                shown, shown_time = frame, t
            if shown is not None and k / fps <= shown_time + _TIME_TOLERANCE:  # the last frame's own times
                image = shown.to_image().convert("RGB")
                while k / fps <= shown_time + _TIME_TOLERANCE:
                    sampled.append(image)
                    k += 1
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, MemoryError) as e:
        raise VideoDecodeError(f"video {path} cannot be decoded ({type(e).__name__}: {e})") from None
    if not sampled:
        raise VideoDecodeError(f"video {path} has no decodable frames")
    return _even(sampled, max_frames) if max_frames is not None else sampled
