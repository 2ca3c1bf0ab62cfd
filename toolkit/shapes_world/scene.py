"""Shapes World scenes: the category vocabulary, shape polygons, textured backgrounds and image rendering.

Shapes World is the synthetic stand-in for COCO / LVIS / MSRVTT used by the tests and the tiny demo
configs of VL-Toolkit (no paper; the formats follow Lin et al., 2014 "Microsoft COCO", Gupta et al., 2019
"LVIS" and Xu et al., 2016 "MSR-VTT"). A scene is a textured, muted background with 1-4 opaque coloured
shapes that never overlap, so that every object is fully visible and its polygon is its exact mask.

Conventions: image coordinates are pixels with ``x`` to the right and ``y`` downwards; a positive angle
turns a shape clockwise on screen. Everything random is drawn from a ``numpy.random.Generator`` passed in
by the caller, so a scene is a pure function of its generator state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    'BACKGROUNDS',
    'CATEGORIES',
    'COLOURS',
    'COLOUR_RGB',
    'NOVEL_CATEGORIES',
    'SHAPES',
    'ShapeInstance',
    'category_id',
    'category_name',
    'layout_objects',
    'polygon_area',
    'render_background',
    'render_shapes',
    'shape_polygon',
]

# Saturated, mutually distant colours; backgrounds are low-saturation mid tones (see render_background) so
# that white, black and every hue stay far from any background pixel (>= ~70 in RGB distance).
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    'red': (215, 35, 35),
    'green': (35, 160, 50),
    'blue': (35, 75, 215),
    'yellow': (240, 210, 30),
    'purple': (135, 45, 175),
    'orange': (245, 130, 20),
    'white': (250, 250, 250),
    'black': (15, 15, 15),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
SHAPES: tuple[str, ...] = ('circle', 'square', 'triangle', 'star', 'hexagon', 'cross')
# Category ids 1..48, colour-major: id = 1 + colour_index * 6 + shape_index.
CATEGORIES: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)
# Open-vocabulary novel pairs: one per colour; triangle and star are used twice, every other shape once, so
# each novel colour keeps five base shapes and each novel shape keeps at least six base colours.
NOVEL_CATEGORIES: tuple[tuple[str, str], ...] = (
    ('red', 'triangle'),
    ('green', 'star'),
    ('blue', 'hexagon'),
    ('yellow', 'cross'),
    ('purple', 'circle'),
    ('orange', 'square'),
    ('white', 'star'),
    ('black', 'triangle'),
)
BACKGROUNDS: tuple[str, ...] = ('noise', 'stripes', 'checker', 'gradient')


def category_id(colour: str, shape: str) -> int:
    """The 1-based category id of a colour-shape pair."""
    return 1 + COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


def category_name(colour: str, shape: str) -> str:
    """The category name, e.g. ``'red circle'``."""
    return f'{colour} {shape}'


@dataclass(frozen=True)
class ShapeInstance:
    """One shape on the canvas.

    Args:
        colour, shape: names from :data:`COLOURS` and :data:`SHAPES`.
        cx, cy: centre in pixels.
        radius: nominal radius in pixels (the shapes are scaled to look about equally large).
        angle: clockwise rotation in degrees.
        rgb: fill colour; defaults to :data:`COLOUR_RGB` of ``colour``.
    """

    colour: str
    shape: str
    cx: float
    cy: float
    radius: float
    angle: float = 0.0
    rgb: tuple[int, int, int] | None = None

    def polygon(self) -> np.ndarray:
        """Vertices (V, 2) as float64 ``(x, y)`` pixels."""
        return shape_polygon(self.shape, self.cx, self.cy, self.radius, self.angle)


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    theta = np.arange(2 * points) * np.pi / points
    rad = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([rad * np.sin(theta), -rad * np.cos(theta)], axis=1)


def _unit_shape(shape: str) -> np.ndarray:
    """Vertices of a shape of nominal radius 1 centred at the origin, pointing up (y down)."""
    if shape == 'circle':
        theta = np.arange(32) * 2 * np.pi / 32
        return np.stack([np.cos(theta), np.sin(theta)], axis=1)
    if shape == 'square':  # circumradius 1.2: about the area of the unit circle
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * (1.2 / np.sqrt(2))
    if shape == 'triangle':
        theta = np.arange(3) * 2 * np.pi / 3
        return 1.35 * np.stack([np.sin(theta), -np.cos(theta)], axis=1)
    if shape == 'star':
        return _star(5, 1.35, 0.6)
    if shape == 'hexagon':
        theta = np.arange(6) * 2 * np.pi / 6
        return 1.1 * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    if shape == 'cross':
        a, w = 1.15, 0.4
        return np.array(
            [
                [-w, -a],
                [w, -a],
                [w, -w],
                [a, -w],
                [a, w],
                [w, w],
                [w, a],
                [-w, a],
                [-w, w],
                [-a, w],
                [-a, -w],
                [-w, -w],
            ],
            dtype=np.float64,
        )
    raise KeyError(f'unknown shape {shape!r}; expected one of {SHAPES}')


_UNIT_SHAPES = {name: _unit_shape(name) for name in SHAPES}


def shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float = 0.0) -> np.ndarray:
    """Vertices (V, 2) of ``shape`` centred at (cx, cy), scaled by ``radius``, turned ``angle`` degrees
    clockwise on screen."""
    if shape not in _UNIT_SHAPES:
        raise KeyError(f'unknown shape {shape!r}; expected one of {SHAPES}')
    t = np.deg2rad(angle)
    # Row vectors (p @ rot); with y pointing down this turns clockwise on screen.
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    return _UNIT_SHAPES[shape] @ rot * radius + np.array([cx, cy])


def polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of a simple polygon (V, 2)."""
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


# -- backgrounds --------------------------------------------------------------------------------------------


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255.0


def _muted_tones(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two low-saturation mid tones of similar hue (RGB float, each channel within about 75..185)."""
    hue = float(rng.uniform(0.0, 1.0))
    sat = float(rng.uniform(0.04, 0.18))
    val = float(rng.uniform(0.50, 0.62))
    delta = float(rng.uniform(0.07, 0.11)) * (1 if rng.random() < 0.5 else -1)
    tone_a = _hsv_to_rgb(hue, sat, val)
    tone_b = _hsv_to_rgb((hue + rng.uniform(-0.05, 0.05)) % 1.0, sat, val + delta)
    return tone_a, tone_b


def render_background(
    rng: np.random.Generator, width: int, height: int, kind: str | None = None
) -> tuple[np.ndarray, str]:
    """A textured muted background.

    Args:
        rng: source of randomness.
        width, height: size in pixels.
        kind: one of :data:`BACKGROUNDS`; drawn uniformly when ``None``.

    Returns:
        ``img_bg`` (H, W, 3) float32 in [0, 255] and the background kind.
    """
    if kind is None:
        kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    tone_a, tone_b = _muted_tones(rng)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 'noise':  # smooth blotches: a coarse random grid upsampled bilinearly
        cells = int(rng.integers(3, 7))
        grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
        mix = (
            np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR), np.float32)
            / 255
        )
    elif kind == 'stripes':
        period = float(rng.uniform(0.08, 0.18)) * min(width, height)
        theta = float(rng.uniform(0.0, np.pi))
        phase = float(rng.uniform(0.0, period))
        coord = xs * np.cos(theta) + ys * np.sin(theta) + phase
        mix = (np.mod(coord, period) < period / 2).astype(np.float32)
    elif kind == 'checker':
        cell = max(2, int(rng.uniform(0.08, 0.16) * min(width, height)))
        ox, oy = rng.integers(0, cell, size=2)
        mix = (((xs + ox) // cell + (ys + oy) // cell) % 2).astype(np.float32)
    elif kind == 'gradient':
        theta = float(rng.uniform(0.0, 2 * np.pi))
        coord = (xs - width / 2) * np.cos(theta) + (ys - height / 2) * np.sin(theta)
        mix = (coord - coord.min()) / max(float(np.ptp(coord)), 1e-6)
    else:
        raise KeyError(f'unknown background {kind!r}; expected one of {BACKGROUNDS}')
    img_bg = tone_a + mix[..., None] * (tone_b - tone_a)
    img_bg = img_bg + rng.normal(0.0, 3.0, size=(height, width, 1)).astype(np.float32)
    return np.clip(img_bg, 0, 255).astype(np.float32), kind


# -- layout and drawing -------------------------------------------------------------------------------------


def _bbox(poly: np.ndarray) -> np.ndarray:
    return np.concatenate([poly.min(axis=0), poly.max(axis=0)])


def layout_objects(
    rng: np.random.Generator,
    objects: Sequence[tuple[str, str]],
    width: int,
    height: int,
    *,
    radius_range: tuple[float, float] = (0.085, 0.15),
    max_angle: float = 25.0,
    gap: float = 3.0,
) -> list[ShapeInstance]:
    """Place shapes so that their boxes stay inside the image and at least ``gap`` pixels apart.

    Args:
        rng: source of randomness.
        objects: (colour, shape) pairs, in drawing order.
        width, height: canvas size in pixels.
        radius_range: nominal radius range as a fraction of ``min(width, height)``.
        max_angle: rotations are drawn uniformly in ``[-max_angle, max_angle]`` degrees.
        gap: minimum distance between boxes and to the border, in pixels.

    Returns:
        One :class:`ShapeInstance` per object. If a random placement keeps failing, radii shrink until the
        shapes fit, so this always succeeds for up to about 6 shapes.
    """
    side = float(min(width, height))
    placed: list[ShapeInstance] = []
    boxes: list[np.ndarray] = []
    for colour, shape in objects:
        radius = float(rng.uniform(*radius_range)) * side
        angle = 0.0 if shape == 'circle' else float(rng.uniform(-max_angle, max_angle))
        for attempt in range(400):
            if attempt and attempt % 50 == 0:
                radius *= 0.85
            rel = _bbox(shape_polygon(shape, 0.0, 0.0, radius, angle))
            lo_x, hi_x = gap - rel[0], width - gap - rel[2]
            lo_y, hi_y = gap - rel[1], height - gap - rel[3]
            if lo_x >= hi_x or lo_y >= hi_y:
                continue
            cx, cy = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
            box = rel + np.array([cx, cy, cx, cy])
            if all(
                box[0] >= b[2] + gap or b[0] >= box[2] + gap or box[1] >= b[3] + gap or b[1] >= box[3] + gap
                for b in boxes
            ):
                break
        else:
            raise RuntimeError(f'could not place {len(objects)} shapes on a {width}x{height} canvas')
        placed.append(
            ShapeInstance(colour, shape, round(cx, 2), round(cy, 2), round(radius, 2), round(angle, 2))
        )
        boxes.append(box)
    return placed


def render_shapes(img_bg: np.ndarray, shapes: Sequence[ShapeInstance], *, supersample: int = 4) -> np.ndarray:
    """Draw shapes over a background with anti-aliased edges.

    Args:
        img_bg: (H, W, 3) float32 background in [0, 255] (not modified).
        shapes: drawn in order (later ones on top).
        supersample: each shape's coverage mask is drawn at this many times the resolution and box-filtered.

    Returns:
        ``img`` (H, W, 3) uint8.
    """
    img = img_bg.copy()
    height, width = img.shape[:2]
    ss = supersample
    for inst in shapes:
        poly = inst.polygon()
        x0, y0 = (max(int(np.floor(v)) - 1, 0) for v in poly.min(axis=0))
        x1 = min(int(np.ceil(poly[:, 0].max())) + 1, width)
        y1 = min(int(np.ceil(poly[:, 1].max())) + 1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        mask = Image.new('L', ((x1 - x0) * ss, (y1 - y0) * ss), 0)
        pts = (poly - np.array([x0, y0])) * ss
        ImageDraw.Draw(mask).polygon([(float(x), float(y)) for x, y in pts], fill=255)
        alpha = (
            np.asarray(mask.resize((x1 - x0, y1 - y0), Image.Resampling.BOX), dtype=np.float32)[..., None]
            / 255.0
        )
        rgb = np.array(inst.rgb if inst.rgb is not None else COLOUR_RGB[inst.colour], dtype=np.float32)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1.0 - alpha) + rgb * alpha
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
