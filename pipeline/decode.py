"""Decoding: any manifest clip -> RGB uint8 frames [T, H, W, 3] plus the fps actually used.

Three of the manifest's source kinds (manifests/schema.py): a video file, a [start_s, end_s) range inside a
video, a folder of numbered frame images (the fourth, SMPL-X parameter files, is read by the smplx623
extractor, not decoded). The frames a clip is made of are chosen once, from a timeline of frame
timestamps read by demuxing the container with PyAV (no decoding), and only then does the selected
backend (decord, torchcodec or PyAV) decode exactly those frames. So the three backends cannot disagree
on *which* frames a clip holds, and the tests check they agree on the pixels.

Memory: open_clip gives a clip's frames in chunks of about DECODE_CHUNK_MIB as they are decoded, so the
job's decode stage resizes each chunk and never holds a whole clip at the video's size; decode_clip holds
the whole clip. The frame count, and the bytes a caller will hold, are checked against the configured limits
before anything is decoded (the job's prepared frames as they grow), so an over-long clip is a
ClipError("too_long"), never an out-of-memory.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from pipeline.errors import ClipError

BACKENDS = ("decord", "torchcodec", "pyav")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm", ".pbm")
# Images a frame folder may hold that are not read as frames (animated, or formats PIL reads partly or not at
# all): refused, not skipped, since the clip would silently lose them.
OTHER_IMAGE_EXTENSIONS = (".gif", ".apng", ".avif", ".heic", ".heif", ".jxl", ".jp2", ".j2k", ".exr", ".dpx", ".tga", ".psd", ".qoi", ".ico")
# A range may end a little after the last frame (annotation rounding); more than this is an error.
RANGE_END_TOLERANCE_S = 0.5


@dataclass(frozen=True)
class DecodeOptions:
    backend: str = "decord"
    target_fps: float | None = None  # resample in time to this rate (nearest earlier frame)
    max_frames: int | None = None  # after resampling, subsample uniformly to at most this many frames
    frame_limit: int = 20_000  # more selected frames than this is a "too_long" error
    max_clip_mib: float = 4096.0  # so is a decoded clip larger than this in memory
    frame_fps: float = 25.0  # fps of a frame folder when the manifest row gives none

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"decode backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.target_fps is not None and not self.target_fps > 0:
            raise ValueError(f"target_fps must be > 0, got {self.target_fps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.frame_limit < 1 or not self.max_clip_mib > 0 or not self.frame_fps > 0:
            raise ValueError("frame_limit, max_clip_mib and frame_fps must be positive")


@dataclass
class DecodedClip:
    frames: np.ndarray  # uint8 [T, H, W, 3], RGB, rotation applied
    fps: float  # rate of the returned frames (after resampling / subsampling)
    timestamps: np.ndarray  # float64 [T], seconds from the clip's start, of each returned frame
    # seconds of source the clip covers, before any resampling (as the probe measures a manifest row's
    # duration_s): frames / fps is not it once max_frames has thinned the frames out
    source_duration_s: float = 0.0


# ----------------------------------------------------------------------------------------------- timelines


_USUAL_GAPS = 8  # the gaps before a frame that tell its usual length (the video's last frame: no next frame says it)


@dataclass
class VideoTimeline:
    """What demuxing a video tells without decoding it: one timestamp per frame, in presentation order."""

    times_s: np.ndarray  # float64 [N], seconds since the file's start (container start_time), sorted
    width: int  # as displayed (rotation applied)
    height: int
    rotation: int  # degrees counter-clockwise, as FFmpeg's display matrix reports it
    codec: str
    frame_duration_s: float  # median gap between frames (a frame's length where none comes before it: shown_s)
    container: str = ""  # FFmpeg's demuxer name ("mov,mp4,m4a,3gp,3g2,mj2", "mpegts", "gif", ...)
    pts: np.ndarray | None = None  # int64 [N]: each frame's timestamp in the stream's time base (times_s's source)
    keyframe_pts: np.ndarray | None = None  # int64, sorted: timestamps of the key frames (where decoding may start)
    pix_fmt: str = ""  # the decoder's pixel format ("yuv420p", "yuv420p10le", ...)
    video_streams: int = 1  # video streams in the file (cover pictures not counted); frames come from the first
    discarded: int = 0  # packets flagged discard (an edit list's pre-roll): in the file, never shown
    untimed: int = 0  # packets with no timestamp (not in the timeline), e.g. a Matroska cut's pre-roll
    # the display matrix as (transpose, flip rows, flip columns), applied in that order to the stored picture:
    # a rotation and any mirror (a mirrored matrix swaps the signer's hands: it must not come out rotated)
    orientation: tuple[bool, bool, bool] = (False, False, False)
    undecodable: int = 0  # leading packets before the first key frame (a stream cut mid-GOP): not in the timeline
    # the decoder that reads the stream's alpha plane where FFmpeg's own decoder drops it (VP8 / VP9 in WebM with
    # alpha_mode=1: libvpx); "" for the stream's usual decoder
    alpha_decoder: str = ""
    empty_packets: int = 0  # timed packets of no bytes (duplicate-frame placeholders): no frames, not in the timeline

    def span_s(self, idx: np.ndarray, until_s: float | None = None) -> float:
        """Seconds the frames ``idx`` (sorted positions) are shown: the first one's start to the last one's end
        (``shown_s``; ``until_s``: a range's end)."""
        last = int(idx[-1])
        return float(self.times_s[last] - self.times_s[idx[0]] + self.shown_s(last, until_s))

    def shown_s(self, i: int, until_s: float | None = None) -> float:
        """Seconds frame ``i`` is shown: until the next frame's time (a variable-rate video's gap there: the
        median of the whole video's gaps gave a range's duration and fps of another rate). A longer gap than the
        usual one around the frame (a freeze, a cut) ends at ``until_s``, a range's end, if that comes first: the
        rest is not the clip's. The video's last frame, which has no next one, is shown for the usual gap: the
        median of the gaps before it."""
        t = self.times_s
        before = np.diff(t[max(0, i - _USUAL_GAPS) : i + 1])
        before = before[before > 0]
        usual = float(np.median(before)) if len(before) else self.frame_duration_s
        if i + 1 < len(t) and t[i + 1] > t[i]:
            shown = float(t[i + 1] - t[i])
            if until_s is not None and shown > usual:
                shown = min(shown, max(float(until_s) - float(t[i]), usual))
            return shown
        return usual

    @property
    def duration_s(self) -> float:
        if len(self.times_s) == 0:
            return 0.0
        return float(self.times_s[-1] + self.shown_s(len(self.times_s) - 1))  # to the end of the last frame, as a clip counts it


def _open_container(path: str):
    import av

    p = Path(path)
    if not p.exists():
        raise ClipError("missing_file", f"no such file: {path}")
    if p.is_dir():
        raise ClipError("not_a_file", f"expected a video file, found a folder: {path}")
    if p.stat().st_size == 0:
        raise ClipError("empty_file", f"zero-byte file: {path}")
    try:
        container = av.open(str(p), metadata_errors="ignore")
    except Exception as exc:  # av raises a zoo of FFmpeg error classes
        damage = _mp4_index_damage(p)
        if damage:
            raise ClipError("corrupt", f"{path} is truncated: {damage}") from None
        raise ClipError("unreadable", f"cannot open {path} as a video: {exc}") from None
    if not container.streams.video:
        container.close()
        damage = _mp4_index_damage(p)  # a cut early in the index leaves FFmpeg a file it opens without streams
        if damage:
            raise ClipError("corrupt", f"{path} is truncated: {damage}")
        raise ClipError("no_video_stream", f"{path} has no video stream")
    if all(s.disposition & av.stream.Disposition.attached_pic for s in container.streams.video):
        container.close()  # an audio file's cover art is a one-picture "video stream" with no frames
        raise ClipError("no_video_stream", f"{path} has no video stream, only a cover picture")
    return container


def read_timeline(path: str) -> VideoTimeline:
    """Demux every packet of the first video stream (fast: no decoding) to list frame timestamps."""
    import av

    container = _open_container(path)
    try:
        stream = container.streams.video[0]
        tb = float(stream.time_base)
        pts: list[int] = []
        is_key: list[bool] = []  # per entry of pts (decode order)
        starts_on_key: bool | None = None  # whether the first packet the decoder gets is a key frame
        keyframes: list[int] = []
        untimed = discarded = demuxed = empty = 0
        try:
            for packet in container.demux(stream):
                demuxed += packet.size > 0 or packet.pts is not None  # not the empty packet that ends a demux
                untimed += packet.pts is None and packet.size > 0
                # A discard-flagged packet is pre-roll before an edit list's start (a clip cut with
                # "ffmpeg -ss T -c copy" keeps the frames back to the previous keyframe): decoders drop it,
                # so it is no frame of the video and must not shift every index after it.
                discarded += bool(packet.is_discard and packet.size > 0)
                empty += packet.size == 0 and packet.pts is not None  # a duplicate-frame placeholder: no frame
                if starts_on_key is None and packet.size > 0:
                    # timed or not, discarded or not: pre-roll from a key frame decodes (an MP4 cut with "-ss T -c copy"
                    # discards the frames from the key frame to T; the frames after them were counted undecodable)
                    starts_on_key = bool(packet.is_keyframe)
                if packet.pts is not None and packet.size > 0 and not packet.is_discard:
                    pts.append(packet.pts)
                    is_key.append(bool(packet.is_keyframe))
                    if packet.is_keyframe:
                        keyframes.append(packet.pts)
        except Exception as exc:
            raise ClipError("corrupt", f"cannot read the packets of {path}: {exc}") from None
        # A stream that does not start on a key frame (a broadcast capture cut mid-GOP, a copy cut on non-key
        # frames): decoders drop what comes before its first key frame, and the leading frames after it that
        # show before it (they reference the missing GOP), as the ffmpeg CLI does. Listing them shifted every
        # range of the first GOP and made PyAV fail whole clips.
        undecodable = 0
        if starts_on_key is False and any(is_key):
            first = is_key.index(True)
            kept = [p for p in pts[first:] if p >= pts[first]]
            undecodable, pts = len(pts) - len(kept), kept
        if not pts and untimed:
            raise ClipError("no_frames", f"{path}: none of its {untimed} video packets has a timestamp (a raw stream such as .h264?); "
                                         f"put it in a container first: ffmpeg -i IN -c copy OUT.mp4")
        if not pts:
            raise ClipError("no_frames", f"{path} has a video stream with no frames")
        # A cut-off MP4 / MOV whose index (moov) comes first still lists every frame, but the demuxer stops at
        # the end of the data without an error: without this check the file probed "ok", only shorter, and
        # ranges past the cut looked like annotation errors (range_out_of_bounds).
        formats = container.format.name.split(",")
        declared = int(stream.frames or 0)
        held = demuxed
        if "avi" in formats and pts:
            # AVI's header counts its frames too, but also the empty entries a capture's dropped frames leave,
            # which the demuxer never returns; a video packet's pts is its entry's number, so the last one says
            # how far the file goes (a capture with dropped frames was called truncated)
            held = max(demuxed, max(pts) + 1)
        # (an MP4's index also counts the samples an edit list leaves out, which the demuxer never returns: a file
        # trimmed without re-encoding was called truncated; its boxes, which all end inside the file, tell it apart)
        if ("mp4" in formats or "avi" in formats) and 0 < held < declared and not ("mp4" in formats and _top_level_boxes(path)[1]):
            raise ClipError("corrupt", f"{path} is truncated: its index lists {declared} video frames, the file holds {demuxed}")
        pts_arr = np.sort(np.asarray(pts, dtype=np.int64))
        # Times count from the file's start (the container's start_time), as players and "ffmpeg -ss" count
        # them and as range annotations are written: a video stream that starts 0.4 s after the audio has
        # its first frame at 0.4 s. (Counting from the video stream's own start shifted every range by that.)
        if container.start_time is not None:
            times = pts_arr * tb - container.start_time / 1_000_000  # AV_TIME_BASE: microseconds
        else:
            origin = stream.start_time if stream.start_time is not None else int(pts_arr[0])
            times = (pts_arr - origin) * tb
        gaps = np.diff(times)
        if len(gaps) and np.median(gaps) > 0:
            frame_dur = float(np.median(gaps))
        else:
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            frame_dur = 1.0 / rate
        if "matroska" in formats:
            # FFmpeg's DURATION is the track's end time, mkvmerge's its span (first to last timestamp): the larger
            covered = max(float(pts_arr[-1] * tb), float((pts_arr[-1] - pts_arr[0]) * tb)) + frame_dur
            _check_matroska_complete(stream, demuxed, covered, frame_dur, path)
        ctx = stream.codec_context
        rotation, orientation = _stream_orientation(container, stream, path)
        width, height = int(ctx.width), int(ctx.height)
        if orientation[0]:
            width, height = height, width
        video_streams = sum(1 for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic)
        alpha_decoder = _libvpx_alpha_decoder(stream)
        pix_fmt = str(ctx.pix_fmt or "")
        return VideoTimeline(times, width, height, rotation, stream.codec_context.name, frame_dur, container.format.name, pts=pts_arr,
                             keyframe_pts=np.sort(np.asarray(keyframes, dtype=np.int64)), pix_fmt=_alpha_pix_fmt(pix_fmt) if alpha_decoder else pix_fmt,
                             alpha_decoder=alpha_decoder, video_streams=video_streams, discarded=discarded, untimed=untimed, orientation=orientation,
                             undecodable=undecodable, empty_packets=empty)
    finally:
        container.close()


def _top_level_boxes(path: str) -> tuple[list[bytes], bool]:
    """An MP4 / QuickTime file's top-level box types (ftyp, moov, mdat...) in order, and whether they all end
    inside it: a file cut off mid-way leaves its last box short. A box that runs to the file's end by its own
    account (size 0) proves nothing: not complete."""
    import struct

    size = os.path.getsize(path)
    at, types = 0, []
    with open(path, "rb") as f:
        while at < size:
            f.seek(at)
            header = f.read(16)
            if len(header) < 8:
                return types, False
            box = struct.unpack(">I", header[:4])[0]
            types.append(header[4:8])
            if box == 1:  # a 64-bit size follows the type
                if len(header) < 16:
                    return types, False
                box = struct.unpack(">Q", header[8:16])[0]
            if box < 8:  # 0: "to the end of the file"; anything else below a header's size: not a box
                return types, False
            at += box
    return types, at == size


def _mp4_index_damage(path: Path) -> str:
    """What is wrong with the index (moov) of an MP4 / MOV that starts as one (ftyp), or "": none at all (a
    recording or download cut off before its end, where the index is written last), or the file ends inside it
    (a "faststart" file, index first, cut early). FFmpeg says only 'Invalid data found when processing input',
    'End of file', or opens it with no streams."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head[4:8] != b"ftyp":
        return ""
    types, complete = _top_level_boxes(str(path))
    if b"moov" not in types:
        return ("an MP4 / MOV without its index (no 'moov' box; a recording or download cut off before it finished, as "
                "the index is written last)")
    if not complete and types[-1] == b"moov":
        return "an MP4 / MOV that ends inside its index (its 'moov' box is cut short: a copy or download cut off early)"
    return ""


# FFmpeg's own VP8 / VP9 decoders drop the alpha plane that WebM keeps beside each frame (Matroska BlockAdditional,
# flagged by the track's alpha_mode tag); libvpx's decoders read it, as browsers do (and `ffmpeg -c:v libvpx-vp9 -i`)
_LIBVPX_ALPHA_DECODERS = {"vp8": "libvpx", "vp9": "libvpx-vp9"}


def _libvpx_alpha_decoder(stream) -> str:
    """The libvpx decoder for a VP8 / VP9 stream marked as carrying alpha, when this FFmpeg has it; else ""
    (the frames then decode without their alpha, the colour coded under transparent pixels showing)."""
    import av

    tags = {k.lower(): str(v).strip() for k, v in (stream.metadata or {}).items()}
    name = _LIBVPX_ALPHA_DECODERS.get(stream.codec_context.name, "")
    if not name or tags.get("alpha_mode") != "1":
        return ""
    try:
        av.codec.Codec(name, "r")
    except Exception:  # an FFmpeg built without libvpx
        return ""
    return name


def _alpha_pix_fmt(pix_fmt: str) -> str:
    """yuv420p -> yuva420p: the format libvpx decodes an alpha stream to (the format itself when none exists)."""
    import av

    try:
        return av.VideoFormat("yuva" + pix_fmt[3:]).name if pix_fmt.startswith("yuv") else pix_fmt
    except (ValueError, TypeError):
        return pix_fmt


def _decoded(container, stream, timeline: "VideoTimeline") -> Iterator[Any]:
    """The stream's frames, as ``container.decode(stream)`` gives them but for two things: a timed packet of no
    bytes (a duplicate-frame placeholder: Ogg Theora, a capture's AVI) is not the decoder's, which refused it
    ("avcodec_send_packet() returned 22") where the ffmpeg CLI drops it, as the timeline does; and a stream whose
    alpha needs libvpx goes through it (a fresh decoder: after a seek it starts on the key frame the container
    landed on)."""
    import av

    if timeline.alpha_decoder:
        decoder = av.CodecContext.create(timeline.alpha_decoder, "r")
        decoder.thread_type = "AUTO"
    else:
        decoder = stream.codec_context
    for packet in container.demux(stream):  # the last packet is the empty, untimed one that flushes the decoder
        if packet.size == 0 and packet.pts is not None:
            continue
        yield from decoder.decode(packet)


def _check_matroska_complete(stream, demuxed: int, covered_s: float, frame_dur: float, path: str) -> None:
    """A cut-off Matroska / WebM file demuxes to its end without an error. The track's statistics tags, which
    FFmpeg (DURATION) and mkvmerge (DURATION, NUMBER_OF_FRAMES) write in the header, still tell its full length."""
    tags = {k.split("-")[0].upper(): v for k, v in (stream.metadata or {}).items()}
    frames = tags.get("NUMBER_OF_FRAMES", "")
    if frames.isdecimal() and 0 < demuxed < int(frames):
        raise ClipError("corrupt", f"{path} is truncated: its track statistics list {frames} video frames, the file holds {demuxed}")
    match = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", tags.get("DURATION", "").strip())
    if match:
        declared_s = int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3])
        if covered_s < declared_s - max(2 * frame_dur, 0.1):
            raise ClipError("corrupt", f"{path} is truncated: its track's DURATION tag says {declared_s:.3f} s, "
                                       f"the file's video frames end at {covered_s:.3f} s")


def _stream_orientation(container, stream, path: str) -> tuple[int, tuple[bool, bool, bool]]:
    """Display rotation in degrees (counter-clockwise) and the orientation (see VideoTimeline) from the display
    matrix, which PyAV exposes on decoded frames: this decodes the first frame, which doubles as the check
    that the stream is decodable at all."""
    from av.sidedata.sidedata import Type

    def orientation_of(frame) -> tuple[int, tuple[bool, bool, bool]]:
        rotation = int(round(frame.rotation or 0))
        try:
            matrix = frame.side_data.get(Type.DISPLAYMATRIX)
        except ValueError:  # a side-data type PyAV cannot name (an MJPEG frame's EXIF): its rotation is all we get
            matrix = None
        if matrix is not None:
            return rotation, display_orientation(np.frombuffer(bytes(matrix), dtype=np.int32))
        return rotation, _rotation_orientation(rotation)

    try:
        container.seek(0)
        for frame in container.decode(stream):
            return orientation_of(frame)
        # FFmpeg's image2 reader (a still .jpg / .jpeg given as a one-frame video) decodes nothing after a seek
        # back to the start once its packet was read: a fresh read of the file does
        again = _open_container(path)
        try:
            for frame in again.decode(again.streams.video[0]):
                return orientation_of(frame)
        finally:
            again.close()
    except Exception as exc:
        if stream.codec_context.name == "webp" and _is_animated_webp(path):  # FFmpeg decodes still WebP only: an intact file
            raise ClipError("unreadable", f"cannot decode {path}: FFmpeg reads only still WebP images, not animated ones; "
                                          f"convert it to frames or a video first (e.g. with libwebp's anim_dump)") from None
        raise ClipError("corrupt", f"cannot decode the first frame of {path}: {exc}") from None
    raise ClipError("corrupt", f"{path}: the decoder returned no frame")


def _is_animated_webp(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(64)
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP" and b"ANIM" in head  # VP8X header, then the ANIM chunk


def display_orientation(matrix: np.ndarray) -> tuple[bool, bool, bool]:
    """FFmpeg's 3x3 display matrix (int32, row-major; a stored pixel (x, y) is shown at (a x + c y, b x + d y))
    -> (transpose, flip rows, flip columns) of the stored picture. Only quarter turns and mirrors exist as
    whole-pixel moves; another angle is taken to the nearest of them (as players show a 45-degree matrix
    upright or sideways, never skewed)."""
    a, b, c, d = (float(v) for v in (matrix[0], matrix[1], matrix[3], matrix[4]))
    if abs(b) + abs(c) > abs(a) + abs(d):  # x' follows y: the picture is transposed
        return True, b < 0, c < 0  # shown row = b x, shown column = c y
    return False, d < 0, a < 0  # shown row = d y, shown column = a x


def _rotation_orientation(degrees_ccw: int) -> tuple[bool, bool, bool]:
    """A quarter-turn rotation (counter-clockwise) as (transpose, flip rows, flip columns)."""
    return {0: (False, False, False), 1: (True, True, False), 2: (False, True, True), 3: (True, False, True)}[round(degrees_ccw / 90) % 4]


def orient(rgb: np.ndarray, orientation: tuple[bool, bool, bool]) -> np.ndarray:
    """A stored [H, W, 3] picture as displayed (``display_orientation``)."""
    transpose, flip_rows, flip_cols = orientation
    if not (transpose or flip_rows or flip_cols):
        return rgb
    if transpose:
        rgb = rgb.swapaxes(0, 1)
    if flip_rows:
        rgb = rgb[::-1]
    if flip_cols:
        rgb = rgb[:, ::-1]
    return np.ascontiguousarray(rgb)


def select_range(times_s: np.ndarray, start_s: float | None, end_s: float | None, duration_s: float, path: str) -> np.ndarray:
    """Indices of the frames presented in [start_s, end_s)."""
    if start_s is None and end_s is None:
        return np.arange(len(times_s))
    start = 0.0 if start_s is None else float(start_s)
    end = duration_s if end_s is None else float(end_s)
    if not (np.isfinite(start) and np.isfinite(end)) or start < 0 or end <= start:
        raise ClipError("bad_range", f"range [{start_s}, {end_s}) is empty or invalid for {path}")
    if start >= duration_s or end > duration_s + RANGE_END_TOLERANCE_S:
        # the times as given, not rounded: [2.9, 3.5001) past a 3 s video read as [2.900, 3.500), which is allowed
        why = "starts at or after its end" if start >= duration_s else f"ends more than {RANGE_END_TOLERANCE_S:g} s after its end"
        raise ClipError("range_out_of_bounds", f"range [{start!r}, {end!r}) s {why}: {path} lasts {duration_s:.6g} s")
    eps = 1e-6  # timestamps are rationals turned into floats
    idx = np.nonzero((times_s >= start - eps) & (times_s < end - eps))[0]
    if len(idx) == 0:
        # the times as given (rounded, [0.0333, 0.0667) read [0.033, 0.067), which holds the frame at 0.0333667)
        before, after = times_s[times_s < start - eps], times_s[times_s >= end - eps]
        around = [f"{before[-1]:.6g} s" if len(before) else "none before", f"{after[0]:.6g} s" if len(after) else "none after"]
        raise ClipError("bad_range", f"range [{start!r}, {end!r}) s of {path} holds no frame (the frames around it: {', '.join(around)})")
    return idx


# Timestamps in milliseconds (Matroska) put a 4 s clip at 4.0003 s, which holds no 41st instant at 10 fps
TIMESTAMP_SLACK_S = 1e-3


def resample_indices(times_s: np.ndarray, target_fps: float | None, max_frames: int | None,
                     frame_duration_s: float | None = None, slack_s: float = TIMESTAMP_SLACK_S) -> tuple[np.ndarray, float]:
    """Pick positions into ``times_s`` (the clip's frame times, from its start) and return the fps they have.

    target_fps: for each instant k / target_fps inside the clip, the last frame shown at or before it
    (works for variable frame rate, since it reads timestamps, not indices). The clip lasts from its first
    frame to the end of its last one, shown for ``frame_duration_s`` (VideoTimeline.shown_s, as the manifest's
    duration_s counts it; default: the clip's mean gap), less ``slack_s`` of timestamp precision (0 for a frame
    folder's exact times). max_frames: then keep at most that many, evenly spread, first and last included.
    """
    n = len(times_s)
    t0 = float(times_s[0])
    span = float(times_s[-1] - t0)
    natural_fps = (n - 1) / span if n > 1 and span > 0 else None
    if target_fps is not None:
        frame_dur = frame_duration_s or (span / (n - 1) if n > 1 and span > 0 else 1.0 / target_fps)
        duration = span + frame_dur
        # every instant k / target_fps inside the clip: k < duration * target_fps (HumanML3D's poses[::k] keeps
        # ceil(n / k)), less the timestamps' own precision (rounded first, so a clip that ends right on an
        # instant gives one count, not one that float error picks)
        count = max(1, int(np.ceil(round((duration - slack_s) * target_fps, 6))))
        instants = t0 + np.arange(count) / target_fps
        # a frame counts as shown at an instant when its time is that instant within half the timestamps' precision:
        # Matroska's whole milliseconds put a 29.97 fps frame 2 at 67 ms, after the instant 66.73 ms, and resampling
        # to the video's own rate took frame 1 twice and skipped frame 2 (a third of the frames, on every MKV / WebM)
        pos = np.searchsorted(times_s, instants + max(1e-6, slack_s / 2), side="right") - 1
        pos = np.clip(pos, 0, n - 1)
        fps = float(target_fps)
    else:
        pos = np.arange(n)
        fps = natural_fps
    if max_frames is not None and len(pos) > max_frames:
        pick = np.round(np.linspace(0, len(pos) - 1, max_frames)).astype(np.int64)
        if fps is not None:
            fps = fps * (max_frames - 1) / (len(pos) - 1) if max_frames > 1 else fps / len(pos)
        pos = pos[pick]
    return pos, _recorded(fps) if fps is not None else None


def rates_differ(given: float, own: float) -> bool:
    """Whether a frame rate given by hand (an annotation, --fps) is another than a source's own: 30 for an NTSC
    29.97 fps video (0.1 % off) is; float noise is not."""
    return abs(given - own) > 1e-4 * own


def _recorded(seconds_or_rate: float) -> float:
    """12 significant digits: (n - 1) / span of exact k / 30 times is 29.999999999999996, which the sample JSON
    recorded; a rate that digits can tell apart (29.97002997) keeps them."""
    return float(f"{seconds_or_rate:.12g}")


def _check_limits(count: int, height: int, width: int, options: DecodeOptions, what: str, memory: bool = True) -> None:
    """``frame_limit``, and with ``memory`` ``max_clip_mib`` for ``count`` RGB frames of height x width held at once."""
    if count > options.frame_limit:
        raise ClipError("too_long", f"{what}: {count} frames to decode, over frame_limit={options.frame_limit}")
    if not memory:
        return
    mib = count * height * width * 3 / 2**20
    if mib > options.max_clip_mib:
        raise ClipError("too_long", f"{what}: {mib:.3g} MiB decoded, over max_clip_mib={options.max_clip_mib:g}")


# ----------------------------------------------------------------------------------------------- backends


# Pixel formats decord 0.6.0 turns into the same RGB as FFmpeg, on even frame sizes: on odd sizes, 10-bit and
# 4:2:2 frames its chroma is off (mean 4-5, max 186 levels against the ffmpeg CLI).
_DECORD_EXACT_PIX_FMTS = ("yuv420p", "yuvj420p", "yuv444p", "yuvj444p", "gray")
# Containers a backend mis-seeks in (wrong frames, no error) or cannot read to the end.
_DECORD_WRONG_CONTAINERS = ("mpegts", "mpeg")
# decord's decoder thread decodes ahead of get_batch into a queue of its own, as far as the clip goes, while the
# caller resizes a chunk: 5.4 GB for a 30 s 1080p clip in the job's decode stage (PyAV 1.8 GB). A longer clip
# than this goes to PyAV, which decodes as it is read.
DECORD_MAX_CLIP_MIB = 256.0
_TORCHCODEC_WRONG_CONTAINERS = ("mpegts", "mpeg", "avi")


def pyav_instead(backend: str, timeline: VideoTimeline, uniq: np.ndarray) -> str | None:
    """Why ``backend`` must not decode these frames of this video (``uniq``: their sorted distinct timeline
    positions), or None when it may.

    Each case below returned wrong frames or wrong pixels *without an error* in our tests
    (tests/pipeline/test_decode.py), so decode_clip decodes such clips through PyAV, whose frames match
    the ffmpeg CLI's. decord seeks to a key frame whenever the frames asked for are not consecutive from
    the first, and a seek into an open GOP (x265's default, and x264 with open-gop) or into a stream-copied
    cut decodes the frames after it with broken references; torchcodec's seeks went wrong on H.264 intra
    refresh; so both only ever read from the start, and PyAV does every seek.
    """
    if backend == "pyav":
        return None
    if timeline.video_streams > 1:
        return f"{timeline.video_streams} video streams (it may read another one than the first)"
    if timeline.discarded or timeline.untimed or timeline.undecodable:  # frames the decoder may show that the timeline does not list
        return "pre-roll packets that are discarded, have no timestamp or precede the first key frame (a cut stream)"
    if backend == "torchcodec" and timeline.container in _TORCHCODEC_WRONG_CONTAINERS:
        return f"the {timeline.container} container"
    # decord and torchcodec apply only the rotation of a display matrix, never its mirror (a mirrored clip came
    # out upside down); decord also mis-sized its buffer for some rotated sizes (64x48 at 90 degrees), and
    # torchcodec follows the system FFmpeg, which did not turn an EXIF-rotated JPEG at all
    if any(timeline.orientation) or timeline.rotation:
        return "a display matrix (rotation or mirror)"
    if has_alpha(timeline.pix_fmt):  # both drop the alpha channel, showing whatever colour lies under transparent pixels
        return f"{timeline.pix_fmt} frames (an alpha channel: PyAV's path puts them onto white, as for images)"
    if backend == "decord":
        if timeline.empty_packets:  # decord hands them to the decoder, which refuses them (the clip failed)
            return f"{timeline.empty_packets} empty (duplicate-frame) packets"
        if len(uniq) * timeline.height * timeline.width * 3 > DECORD_MAX_CLIP_MIB * 2**20:
            return f"a clip of more than {DECORD_MAX_CLIP_MIB:g} MiB of frames (decord's decoder thread reads ahead without bound)"
        if timeline.container in _DECORD_WRONG_CONTAINERS:
            return f"the {timeline.container} container"
        if timeline.pix_fmt not in _DECORD_EXACT_PIX_FMTS or timeline.width % 2 or timeline.height % 2:
            return f"{timeline.pix_fmt} frames of {timeline.width}x{timeline.height}"
    # torchcodec's seeks also went wrong (H.264 intra refresh: frames 26-30 for 20-24), so both read from the start
    if int(uniq[0]) != 0 or (np.diff(uniq) > 1).any():  # distinct and sorted: any gap is a seek
        return "frames that need a seek"
    return None


# Backends decode the sorted, unique timeline positions ``uniq`` of a clip and yield them in order, in chunks of
# at most ``chunk`` frames (open_clip turns repeated positions back into repeated frames). A caller that
# resizes each chunk as it comes (the job's decode stage) holds one chunk of full-size frames at a time, not
# the clip: a 30 s 1080p clip is 5.6 GB of RGB, its 224-pixel crops 0.14 GB.


def _decord_chunks(path: str, uniq: np.ndarray, timeline: VideoTimeline, chunk: int) -> Iterator[np.ndarray]:
    import decord

    done = 0  # frames yielded before a failure: the rest comes from PyAV
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        if len(reader) == len(timeline.times_s):  # else it counts frames the decoder never shows: its indices are not ours
            # get_batch seeks only when a position is not the frame after the last one read, whichever call read
            # it, so reading consecutive positions in several calls decodes as one call does
            for start in range(0, len(uniq), chunk):
                part = reader.get_batch(uniq[start : start + chunk].tolist()).asnumpy()
                done += len(part)
                yield part
            return
    except decord.DECORDError:
        # decord also fails on files FFmpeg decodes: the same buffer bug on unrotated small or thin frames
        # (16x48, 48x16, 2x200), GIFs ("Failed to measure duration/frame-count"), ...; a file that is really
        # broken fails in PyAV too, so it still ends as "corrupt", with PyAV's message.
        pass
    yield from _pyav_chunks(path, uniq[done:], timeline, chunk)


def _torchcodec_chunks(path: str, uniq: np.ndarray, timeline: VideoTimeline, chunk: int) -> Iterator[np.ndarray]:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(path, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=1)
    if decoder.metadata.num_frames != len(timeline.times_s):
        # it counts frames the decoder never shows (a stream-copied cut into Matroska: 91 and 93 for 90), so its
        # frame indices are not the timeline's and it returned frames 1-4 early without an error
        yield from _pyav_chunks(path, uniq, timeline, chunk)
        return
    for start in range(0, len(uniq), chunk):  # the decoder keeps its position between calls, as decord does
        try:
            frames = decoder.get_frames_at(uniq[start : start + chunk].tolist()).data.numpy()
        except RuntimeError as exc:
            if "pre-allocated tensor of shape" not in str(exc):
                raise
            # torchcodec cannot follow a stream whose frame size changes mid-way; PyAV scales such frames back
            # to the stream's size (the CLI's frames)
            yield from _pyav_chunks(path, uniq[start:], timeline, chunk)
            return
        yield frames


def _pyav_chunks(path: str, uniq: np.ndarray, timeline: VideoTimeline, chunk: int) -> Iterator[np.ndarray]:
    return _stacked(_pyav_frames(path, uniq, timeline), chunk)


def _stacked(frames: Iterator[np.ndarray], chunk: int) -> Iterator[np.ndarray]:
    """Frames one by one -> arrays of ``chunk`` frames (the last one shorter)."""
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == chunk:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def _pyav_frames(path: str, uniq: np.ndarray, timeline: VideoTimeline) -> Iterator[np.ndarray]:
    """The frames at ``uniq`` (positions in the timeline, presentation order), one by one, in order.

    A clip that starts after the video's first key frame is decoded from the last key frame at or before its
    first frame (frames matched by timestamp, the clip's frames held until all are found); where that cannot be
    done exactly (untimed frames, a seek that lands late, timestamps out of order), from the file's start,
    counting frames in presentation order as the other backends do (streamed: one frame at a time).
    """
    by_timestamp: list[Callable[[str, np.ndarray, VideoTimeline], Iterator[tuple[int, np.ndarray]]]] = []
    key_pts = _key_frame_before(int(uniq[0]), timeline)
    if key_pts is not None:
        by_timestamp.append(functools.partial(_pyav_by_timestamp, key_pts=key_pts))
    if timeline.untimed or timeline.undecodable:  # decoded frames the timeline does not list: match by timestamp
        by_timestamp.append(_pyav_by_timestamp)
    held_mib = len(uniq) * timeline.height * timeline.width * 3 / 2**20
    for way in by_timestamp:
        # all or nothing: where frames cannot be placed by timestamp (an AVI's B-frames leave the decoder with
        # timestamps out of order), counting from the start must give every frame, since a clip of frames picked
        # both ways came out scrambled. So the frames are held until all are placed; a range too large to hold at
        # full size (30 s of 1080p is 5.4 GiB: a decode worker reached 6.7 GB) is checked in a first pass that
        # decodes without converting a frame, then decoded again and streamed.
        if held_mib <= RANGE_HOLD_MIB:
            frames = list(_in_order(way(path, uniq, timeline), uniq))
            if len(frames) == len(uniq):
                yield from frames
                return
            del frames
        elif sum(1 for _ in _in_order(way(path, uniq, timeline, convert=False), uniq)) == len(uniq):
            yield from _all_of(_in_order(way(path, uniq, timeline), uniq), len(uniq), f"{path}: the decoder placed fewer frames "
                               "on a second pass than on the first")
            return
    yield from _all_of(_in_order(_pyav_from_start(path, uniq, timeline), uniq), len(uniq),
                       f"{path}: the decoder returned fewer frames than the container lists")


def _all_of(frames: Iterator[np.ndarray], count: int, short: str) -> Iterator[np.ndarray]:
    """``frames`` streamed; a clip's ``corrupt`` (``short``) when fewer than ``count`` come."""
    done = 0
    for rgb in frames:
        done += 1
        yield rgb
    if done < count:
        raise ClipError("corrupt", short)


def _in_order(found: Iterator[tuple[int, np.ndarray]], want: np.ndarray) -> Iterator[np.ndarray]:
    """The frames of ``want`` (sorted positions) from (position, frame) pairs, in order, until one is missing.
    A frame that comes early (a broken stream's timestamps out of order) waits for those before it."""
    rank = {int(p): k for k, p in enumerate(want.tolist())}
    early: dict[int, np.ndarray] = {}
    next_rank = 0
    try:
        for pos, rgb in found:
            k = rank.get(pos)
            if k is None or k < next_rank:
                continue
            early[k] = rgb
            while next_rank in early:
                yield early.pop(next_rank)
                next_rank += 1
            if next_rank == len(want):
                return
    finally:
        found.close()  # the decoder's file, now rather than when the generator is collected


def _pyav_from_start(path: str, want: np.ndarray, timeline: VideoTimeline) -> Iterator[tuple[int, np.ndarray]]:
    import av

    wanted, last = set(want.tolist()), int(want[-1])
    to_rgb = _RgbConverter(timeline)
    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        # Frames leave the decoder in presentation order; index them by that order, as the other backends do.
        for i, frame in enumerate(_decoded(container, stream, timeline)):
            if i in wanted:
                yield i, orient(to_rgb(frame), timeline.orientation)
            if i >= last:
                break


def _key_frame_before(first: int, timeline: VideoTimeline) -> int | None:
    """pts of the last key frame at or before timeline position ``first``, when it is not the video's first frame."""
    keys = timeline.keyframe_pts
    if keys is None or not len(keys):
        return None
    at = np.searchsorted(keys, int(timeline.pts[first]), side="right") - 1
    return int(keys[at]) if at >= 0 and int(keys[at]) > int(timeline.pts[0]) else None


def _pyav_by_timestamp(path: str, want: np.ndarray, timeline: VideoTimeline, key_pts: int | None = None,
                       convert: bool = True) -> Iterator[tuple[int, np.ndarray | None]]:
    """Each decoded frame placed by its timestamp (a frame without one, or not in the timeline, is not the
    clip's): from the file's start, or, with ``key_pts``, from that key frame (a seek). Stops where this cannot
    be exact: a seek that lands after the key frame, an untimed frame after a seek. ``convert=False``: positions
    only (None for the frame), to learn whether every frame is placed without holding any."""
    import av

    index_of = {int(p): i for i, p in enumerate(timeline.pts)}
    wanted = set(want.tolist())
    last_pts = int(timeline.pts[int(want[-1])])
    to_rgb = _RgbConverter(timeline)
    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if key_pts is not None:
            try:
                container.seek(key_pts, stream=stream, backward=True)
            except av.error.FFmpegError:
                return
        reached_key = key_pts is None
        for frame in _decoded(container, stream, timeline):
            if frame.pts is None:
                if key_pts is not None:
                    return
                continue
            if key_pts is not None and frame.pts < key_pts:
                continue  # before the key frame (the seek may land earlier; an open GOP's leading frames may be broken)
            if not reached_key:
                if frame.pts != key_pts:
                    return  # the seek landed after the key frame: frames before this one would be missed
                reached_key = True
            i = index_of.get(int(frame.pts))
            if i in wanted:
                yield i, orient(to_rgb(frame), timeline.orientation) if convert else None
            if frame.pts >= last_pts:
                break


def has_alpha(pix_fmt: str) -> bool:
    """Whether frames of this FFmpeg pixel format may carry transparency (rgba, yuva420p, ya8, a palette...)."""
    import av

    try:
        fmt = av.VideoFormat(pix_fmt)
    except (ValueError, TypeError):  # unknown to this FFmpeg, or no format probed
        return False
    return fmt.has_palette or any(c.is_alpha for c in fmt.components)


def onto_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 [..., 4] -> RGB uint8 over a white background, rounded as PIL's ``alpha_composite`` (which the
    image path uses, as the models' Hugging Face processors' ``convert_to_rgb`` does) rounds."""
    alpha = rgba[..., 3:4].astype(np.uint32)
    mixed = rgba[..., :3].astype(np.uint32) * alpha + 255 * (255 - alpha) + 128
    return ((mixed + (mixed >> 8)) >> 8).astype(np.uint8)


class _RgbConverter:
    """Frame -> RGB uint8 through libavfilter's pixel-format conversion, which gives FFmpeg's CLI's (and
    torchcodec's) pixels. PyAV's ``to_ndarray(format="rgb24")`` calls swscale itself and, on 10-bit or
    odd-sized 4:2:0 frames, is several levels off both (mean 7.8, max 116 on a 10-bit H.264 clip).

    Every frame comes out at the stream's size (its first frame's, before rotation): a stream that changes size
    mid-way (a browser or WebRTC recording) is scaled back to it, as the ffmpeg CLI and decord do, so that a
    clip's frames stack (it failed the clip on PyAV and torchcodec)."""

    def __init__(self, timeline: "VideoTimeline") -> None:
        transposed = timeline.orientation[0]
        self.size = (timeline.height, timeline.width) if transposed else (timeline.width, timeline.height)
        self.graph = None
        self.params = None
        self.alpha = False

    def __call__(self, frame) -> np.ndarray:
        import av

        params = (frame.width, frame.height, frame.format.name)
        if params != self.params:  # first frame, or the stream changed size / format mid-way
            self.graph = av.filter.Graph()
            src = self.graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name, time_base=frame.time_base)
            chain = [src]
            if (frame.width, frame.height) != self.size:  # scaled first, then converted: the CLI's order
                chain.append(self.graph.add("scale", f"{self.size[0]}:{self.size[1]}"))
            # transparent pixels onto white, as a frame folder's images are: rgb24 would drop the alpha
            self.alpha = has_alpha(frame.format.name)
            chain += [self.graph.add("format", f"pix_fmts={'rgba' if self.alpha else 'rgb24'}"), self.graph.add("buffersink")]
            for a, b in zip(chain, chain[1:]):
                a.link_to(b)
            self.graph.configure()
            self.params = params
        self.graph.push(frame)
        rgb = self.graph.pull().to_ndarray()
        return onto_white(rgb) if self.alpha else rgb


_CHUNKERS = {"decord": _decord_chunks, "torchcodec": _torchcodec_chunks, "pyav": _pyav_chunks}


# ----------------------------------------------------------------------------------------------- frame folders


def _natural_key(name: str) -> list[Any]:
    # isdecimal, not isdigit: '²' is a digit that int() refuses, and re's \d does not split it off
    return [int(tok) if tok.isdecimal() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_frame_files(folder: str) -> list[Path]:
    p = Path(folder)
    if not p.exists():
        raise ClipError("missing_file", f"no such frame folder: {folder}")
    if not p.is_dir():
        raise ClipError("not_a_folder", f"expected a folder of frame images, found a file: {folder}")
    # Hidden files are not frames: macOS leaves "._0001.png" AppleDouble files (resource forks, not images)
    # next to every image it copies to a non-Mac disk, and one of them would make the whole clip "corrupt".
    # a link to an image that is gone stays in (is_file() is False for it): reading it fails the clip as corrupt,
    # where skipping it would silently drop a frame
    try:
        entries = [f for f in p.iterdir() if not f.name.startswith(".") and (f.is_file() or f.is_symlink())]
    except PermissionError as exc:  # a folder without read or search permission: the file system's answer, not a crash
        raise ClipError("unreadable", f"cannot list frame folder {folder}: {exc.strerror}") from None
    files = [f for f in entries if f.suffix.lower() in IMAGE_EXTENSIONS]
    # images of other kinds (a .gif: animated, only its first frame would be read) are not skipped in silence:
    # the clip would lose frames
    others = sorted(f.name for f in entries if f.suffix.lower() in OTHER_IMAGE_EXTENSIONS)
    if others:
        raise ClipError("unsupported_frames", f"{folder}: {len(others)} image file(s) of a kind signfeat does not read as frames "
                                              f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); frames are "
                                              f"{', '.join(IMAGE_EXTENSIONS)}: convert them, or move them out of the folder")
    if not files:
        raise ClipError("empty_folder", f"no frame images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    # the name breaks ties ("01.png" and "1.png" have one natural key), else the order, and so the clip and
    # its content hash, would follow the file system's listing order
    return sorted(files, key=lambda f: (_natural_key(f.name), f.name))


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            # A phone's photo keeps its pixels as the sensor saw them plus an EXIF Orientation tag, as a phone
            # video keeps a display matrix; frames are returned as displayed, like rotated videos.
            ImageOps.exif_transpose(img, in_place=True)
            if img.mode.startswith("I"):
                # 16-bit greyscale (PNG "I;16", or "I"): PIL's convert("RGB") clips every value above 255 to
                # white instead of scaling; scale 0..65535 to 0..255, rounded (FFmpeg's gray16 -> rgb24 is within 1).
                values = np.asarray(img, dtype=np.int64)
                grey = ((np.clip(values, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
                if isinstance(img.info.get("transparency"), int):  # a tRNS grey level: those pixels are transparent
                    grey[values == img.info["transparency"]] = 255
                return np.repeat(grey[..., None], 3, axis=2)
            if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
                # transparent pixels onto white, as the models' Hugging Face processors do (transformers'
                # convert_to_rgb): convert("RGB") would drop the alpha and show whatever colour lies under it
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255)), rgba)
            return np.asarray(img.convert("RGB"))
    except PermissionError as exc:
        raise ClipError("unreadable", f"cannot open frame image {path}: {exc.strerror}") from None
    except Exception as exc:
        raise ClipError("corrupt", f"cannot decode frame image {path}: {exc}") from None


# ----------------------------------------------------------------------------------------------- entry point

# Full-size frames decoded at a time (a chunk): 64 MiB is 10 frames of 1080p, 24 of 720p, 400 of PHOENIX's 210x260.
DECODE_CHUNK_MIB = 64.0
# A PyAV range placed by timestamp is held at full size until all its frames are found, up to this; a larger one
# is decoded twice (a first pass that converts nothing proves every frame is placed, the second streams).
RANGE_HOLD_MIB = 1024.0


@dataclass
class ClipFrames:
    """A clip about to be decoded: what decoding gives, known before any frame is decoded, and its distinct
    frames as they are decoded, in chunks (a chunk raises ClipError when the decoder fails on it). A frame that
    stands several times in the clip (target_fps above the source's rate) is decoded once: ``repeats`` says how
    often, so a caller resizes it once and repeats the small result (``with_repeats``)."""

    count: int  # frames of the clip, repeats included
    height: int
    width: int
    fps: float  # as DecodedClip's
    timestamps: np.ndarray
    source_duration_s: float
    chunks: Iterator[np.ndarray]  # uint8 [k, H, W, 3]: the distinct frames, in order
    repeats: np.ndarray  # int64 [distinct frames], summing to count

    def with_repeats(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(chunk, how often each of its frames stands in the clip), chunk after chunk."""
        given = 0
        for part in self.chunks:
            yield part, self.repeats[given : given + len(part)]
            given += len(part)


def repeat_frames(array: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    """Each frame of ``array`` (along axis 0) ``repeats`` times: a chunk of distinct frames as the clip holds it."""
    return array if (repeats == 1).all() else np.repeat(array, repeats, axis=0)


def open_clip(clip: Mapping[str, Any], options: DecodeOptions = DecodeOptions(), chunk_mib: float | None = None) -> ClipFrames:
    """Choose a manifest row's frames (needs ``source_kind`` and ``path``; ``start_s``/``end_s`` for ranges;
    ``fps`` for frames) and return them as chunks of about ``chunk_mib`` (default DECODE_CHUNK_MIB) MiB, decoded
    only as they are read.
    Checks ``frame_limit``; what a caller keeps is its own to check against ``max_clip_mib``."""
    kind = clip.get("source_kind")
    path = str(clip.get("path"))
    if kind == "frames":
        files = list_frame_files(path)
        _check_unchanged(clip, sum(f.stat().st_size for f in files if f.is_file()))
        fps = float(clip.get("fps") or options.frame_fps)
        times = np.arange(len(files)) / fps
        # a frame folder's times are exact (k / fps): no timestamp precision to allow for (29.97 fps lost an instant)
        pos, out_fps = resample_indices(times, options.target_fps, options.max_frames, 1.0 / fps, slack_s=0.0)
        uniq, repeats = np.unique(pos, return_counts=True)  # sorted = in order, since positions never go back
        first = _load_image(files[int(uniq[0])])
        _check_limits(len(pos), first.shape[0], first.shape[1], options, path, memory=False)
        chunk = _chunk_frames(first.shape[0], first.shape[1], chunk_mib)
        return ClipFrames(len(pos), first.shape[0], first.shape[1], float(out_fps or fps), times[pos], len(files) / fps,
                          _stacked(_folder_frames(files, uniq, first), chunk), repeats)
    if kind not in ("video", "range"):
        raise ClipError("bad_source_kind", f"unknown source_kind {kind!r} for {path}")
    if os.path.isfile(path):  # missing: read_timeline says so
        _check_unchanged(clip, os.path.getsize(path))
    timeline = read_timeline(path)
    start_s, end_s = (clip.get("start_s"), clip.get("end_s")) if kind == "range" else (None, None)
    in_range = select_range(timeline.times_s, start_s, end_s, timeline.duration_s, path)
    clip_times = timeline.times_s[in_range] - (float(start_s) if start_s is not None else 0.0)
    pos, out_fps = resample_indices(clip_times, options.target_fps, options.max_frames, timeline.shown_s(int(in_range[-1]), end_s))
    indices = in_range[pos]  # non-decreasing (a frame repeats when target_fps is above the video's rate)
    uniq, repeats = np.unique(indices, return_counts=True)
    _check_limits(len(indices), timeline.height, timeline.width, options, path, memory=False)
    backend = "pyav" if pyav_instead(options.backend, timeline, uniq) else options.backend
    if out_fps is None:  # a single frame: report the stream's own rate
        out_fps = _recorded(1.0 / timeline.shown_s(int(in_range[-1]), end_s))  # its own length, as the manifest's fps; 24.99999999999998
    chunk = _chunk_frames(timeline.height, timeline.width, chunk_mib)
    if Path(path).suffix.lower() in IMAGE_EXTENSIONS and len(timeline.times_s) == 1:
        # a still image given as a clip: read as a frame folder's images are (transparency onto white, 16-bit
        # scaled), not as FFmpeg's image demuxer shows it (alpha dropped: the colour under it)
        chunks = iter([_load_image(Path(path))[None]])
    else:
        chunks = _video_chunks(backend, path, uniq, timeline, chunk)
    return ClipFrames(len(indices), timeline.height, timeline.width, float(out_fps), clip_times[pos], _recorded(timeline.span_s(in_range, end_s)),
                      chunks, repeats)


def _check_unchanged(clip: Mapping[str, Any], size: int) -> None:
    """A manifest row's source whose size (the file, a range's whole video, or a frame folder's images summed, as
    the probe measured ``bytes``) changed since the manifest was built (a video replaced or re-encoded, a folder
    that gained or lost images) was extracted under the old row's id, text and curation: now a failure. A row
    without ``bytes`` (a hand-made manifest, ``signfeat features``) is not checked."""
    then = clip.get("bytes")
    if then is None or (isinstance(then, float) and not math.isfinite(then)):
        return
    if size != int(then):
        raise ClipError("changed", f"{clip.get('path')} is {size} bytes now, {int(then)} when the manifest was built: it changed since. "
                                   "Rebuild the manifest (signfeat manifest build, then curate) so that its rows describe it")


def decode_clip(clip: Mapping[str, Any], options: DecodeOptions = DecodeOptions(), chunk_mib: float | None = None) -> DecodedClip:
    """Decode one manifest row whole (see open_clip): the clip's frames must fit in ``max_clip_mib``."""
    frames = open_clip(clip, options, chunk_mib)
    _check_limits(frames.count, frames.height, frames.width, options, str(clip.get("path")))
    out = np.empty((frames.count, frames.height, frames.width, 3), np.uint8)
    filled = 0
    for part, repeats in frames.with_repeats():
        part = repeat_frames(part, repeats)
        out[filled : filled + len(part)] = part
        filled += len(part)
    return DecodedClip(out, frames.fps, frames.timestamps, frames.source_duration_s)


def _chunk_frames(height: int, width: int, chunk_mib: float | None) -> int:
    budget = DECODE_CHUNK_MIB if chunk_mib is None else chunk_mib
    return max(1, int(budget * 2**20 // max(1, height * width * 3)))


def _video_chunks(backend: str, path: str, uniq: np.ndarray, timeline: VideoTimeline, chunk: int) -> Iterator[np.ndarray]:
    """The frames at the sorted distinct positions ``uniq`` from ``backend`` in chunks, checked: a decoder's
    failure is the clip's ``corrupt``."""
    given = 0
    try:
        for part in _CHUNKERS[backend](path, uniq, timeline, chunk):
            if part.ndim != 4 or part.shape[1:] != (timeline.height, timeline.width, 3) or given + len(part) > len(uniq):
                raise ClipError("corrupt", f"{backend} decoded {part.shape} from {path} (frames {given}+), expected "
                                           f"{(len(uniq), timeline.height, timeline.width, 3)}")
            given += len(part)
            yield np.ascontiguousarray(part, dtype=np.uint8)
    except ClipError:
        raise
    except Exception as exc:
        raise ClipError("corrupt", f"{backend} failed to decode {path}: {type(exc).__name__}: {exc}") from None
    if given != len(uniq):
        raise ClipError("corrupt", f"{backend} decoded {given} frames from {path}, expected {len(uniq)}")


def _folder_frames(files: list[Path], uniq: np.ndarray, first: np.ndarray) -> Iterator[np.ndarray]:
    yield first
    for p in uniq[1:].tolist():
        img = _load_image(files[p])
        if img.shape != first.shape:
            raise ClipError("mixed_sizes", f"{files[p]} is {img.shape[1]}x{img.shape[0]}, the folder's first frame {first.shape[1]}x{first.shape[0]}")
        yield img
