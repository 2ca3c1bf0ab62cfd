"""Shapes World videos: one shape performs one action, optionally next to a static second shape.

Actions (MSRVTT ``category`` = index in :data:`~toolkit.shapes_world.captions.ACTIONS`):

* ``move``: translates left/right/up/down by 30-40 % of the frame side;
* ``turn``: rotates 25-40 degrees clockwise or counterclockwise (triangle, square or cross only). The
  angle stays under half the shortest symmetry period (90 degrees: square, cross), so any two frames,
  the first and the last included, show the true sense. Up to 1.2 turned 60-90 degrees: a square turned
  75 degrees one way ended as if turned 15 degrees the other way, and a model trained on it answered
  turn questions at chance;
* ``grow`` / ``shrink``: the radius scales between 0.5x and 1x;
* ``change``: the colour switches to another one between the first and the last third of the clip.

Videos are H.264 (``libx264``, ``yuv420p``, no B-frames) mp4 files written with PyAV; ``start time`` is 0
and ``end time`` is ``frames / fps`` in the MSRVTT annotations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit.shapes_world.scene import (
    COLOUR_RGB,
    COLOURS,
    SHAPES,
    ShapeInstance,
    render_background,
    render_shapes,
)

__all__ = ['TURN_SHAPES', 'VideoSpec', 'encode_mp4', 'render_video_frames', 'sample_video']

TURN_SHAPES = ('triangle', 'square', 'cross')
_ACTION_PROBS = {'move': 0.4, 'turn': 0.15, 'grow': 0.15, 'shrink': 0.15, 'change': 0.15}


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render one video.

    Args:
        action: one of ``move``, ``turn``, ``grow``, ``shrink``, ``change``.
        colour, shape: the acting shape (its colour at the first frame).
        detail: direction (move), sense (turn), new colour (change) or ``None``.
        start, end: the acting shape at the first and the last frame.
        switch_frame: first frame drawn in the new colour (``change`` only).
        distractor: the static second shape, if any.
        background_seed: seed of the (static) background texture.
    """

    action: str
    colour: str
    shape: str
    detail: str | None
    start: ShapeInstance
    end: ShapeInstance
    switch_frame: int
    distractor: ShapeInstance | None
    background_seed: int


def _extent(inst: ShapeInstance) -> np.ndarray:
    poly = inst.polygon()
    return np.concatenate([poly.min(axis=0), poly.max(axis=0)])


def sample_video(rng: np.random.Generator, *, size: int, frames: int) -> VideoSpec:
    """Draw an action, the acting shape, its path and an optional static distractor."""
    actions = list(_ACTION_PROBS)
    action = actions[int(rng.choice(len(actions), p=list(_ACTION_PROBS.values())))]
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    shapes = TURN_SHAPES if action == 'turn' else SHAPES
    shape = shapes[int(rng.integers(len(shapes)))]
    radius = float(rng.uniform(0.13, 0.17)) * size
    angle = 0.0 if shape == 'circle' else float(rng.uniform(-20, 20))
    margin = 2.0
    detail: str | None = None
    r0, r1, a0, a1 = radius, radius, angle, angle
    dx = dy = 0.0
    if action == 'move':
        detail = ('left', 'right', 'up', 'down')[int(rng.integers(4))]
        dist = float(rng.uniform(0.3, 0.4)) * size
        dx, dy = {'left': (-dist, 0.0), 'right': (dist, 0.0), 'up': (0.0, -dist), 'down': (0.0, dist)}[detail]
    elif action == 'turn':
        detail = ('clockwise', 'counterclockwise')[int(rng.integers(2))]
        a1 = angle + float(rng.uniform(25, 40)) * (1 if detail == 'clockwise' else -1)
    elif action in ('grow', 'shrink'):
        big = float(rng.uniform(0.17, 0.2)) * size
        r0, r1 = (0.5 * big, big) if action == 'grow' else (big, 0.5 * big)
    else:
        detail = [c for c in COLOURS if c != colour][int(rng.integers(len(COLOURS) - 1))]
    # Swept box of the actor relative to its start centre (rotation and scale: bounding circle of the
    # largest state, which contains every intermediate polygon).
    reach = max(r0, r1) * 1.4
    rel = np.array([min(0.0, dx) - reach, min(0.0, dy) - reach, max(0.0, dx) + reach, max(0.0, dy) + reach])
    cx = float(rng.uniform(margin - rel[0], size - margin - rel[2]))
    cy = float(rng.uniform(margin - rel[1], size - margin - rel[3]))
    start = ShapeInstance(colour, shape, cx, cy, r0, a0)
    end = ShapeInstance(colour, shape, cx + dx, cy + dy, r1, a1)
    swept = rel + np.array([cx, cy, cx, cy])
    distractor = None
    if rng.random() < 0.5:
        d_colour = [c for c in COLOURS if c not in (colour, detail)][int(rng.integers(len(COLOURS) - 2))]
        d_shape = [s for s in SHAPES if s != shape][int(rng.integers(len(SHAPES) - 1))]
        d_radius = float(rng.uniform(0.11, 0.14)) * size
        for _ in range(100):
            lo, hi = d_radius * 1.4 + margin, size - d_radius * 1.4 - margin
            d_cx, d_cy = (float(v) for v in rng.uniform(lo, hi, 2))
            cand = ShapeInstance(d_colour, d_shape, d_cx, d_cy, d_radius, 0.0)
            box = _extent(cand)
            apart = box[0] >= swept[2] + 2 or swept[0] >= box[2] + 2
            if apart or box[1] >= swept[3] + 2 or swept[1] >= box[3] + 2:
                distractor = cand
                break
    switch = int(rng.integers(frames // 3, max(frames // 3 + 1, (2 * frames) // 3 + 1)))
    return VideoSpec(
        action, colour, shape, detail, start, end, switch, distractor, int(rng.integers(0, 2**31 - 1))
    )


def render_video_frames(spec: VideoSpec, *, size: int, frames: int) -> np.ndarray:
    """Frames ``vid_frames`` (T, H, W, 3) uint8 of a :class:`VideoSpec`."""
    img_bg, _ = render_background(np.random.default_rng(spec.background_seed), size, size)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    s, e = spec.start, spec.end
    for t in range(frames):
        w = t / max(frames - 1, 1)
        rgb = COLOUR_RGB[spec.colour]
        if spec.action == 'change' and t >= spec.switch_frame:
            rgb = COLOUR_RGB[str(spec.detail)]
        actor = ShapeInstance(
            spec.colour,
            spec.shape,
            s.cx + w * (e.cx - s.cx),
            s.cy + w * (e.cy - s.cy),
            s.radius + w * (e.radius - s.radius),
            s.angle + w * (e.angle - s.angle),
            rgb,
        )
        shapes = [actor] if spec.distractor is None else [spec.distractor, actor]
        out[t] = render_shapes(img_bg, shapes)
    return out


def encode_mp4(path: str, vid_frames: np.ndarray, *, fps: int, crf: int = 18) -> None:
    """Write ``vid_frames`` (T, H, W, 3) uint8 RGB as an H.264 ``yuv420p`` mp4 (even H and W)."""
    import av  # local import: only video generation needs PyAV

    height, width = vid_frames.shape[1:3]
    with av.open(path, mode='w') as container:
        stream = container.add_stream('libx264', rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = 'yuv420p'
        stream.options = {'crf': str(crf), 'preset': 'veryfast', 'bf': '0', 'threads': '1'}
        for frame_rgb in vid_frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_rgb), format='rgb24')
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
