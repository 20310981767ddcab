"""Heatmaps drawn over X-rays, for people to look at: arrays in, PIL images out (no I/O, no Ray).

``panel_row`` lays out the paper's figures: the triple (CAM1, CAM2 and the kernel, each over the
image; Figs. 4-5) and the alpha strip (the kernel at several alphas; Fig. 6). Only pictures are
scaled: every map is min-max scaled per panel for display, stored arrays stay raw; under each panel
its colour scale runs from that panel's own minimum (black) to its maximum (yellow), numbers given,
so colours are never compared across panels by mistake. A constant map (ADDK of two maps with no
positive evidence in either, say) has no scale to show: its panel is dark and says "constant".

Output size of ``panel_row`` with n panels, for an image of H x W pixels:

* each panel is the image resized, aspect kept, so that its longer side is ``side`` pixels
  (``side=None`` keeps the image's own size): pw x ph with ``max(pw, ph) == side``;
* width  ``n * pw + (n - 1) * GAP``;
* height ``TITLE_HEIGHT + ph + SCALE_HEIGHT``, plus ``LEGEND_HEIGHT`` when boxes are drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dualcam.maps.cam import upsample
from dualcam.maps.regions import Box

DEFAULT_SIDE = 320
"""Longer side of each panel in pixels: 50 triples render in seconds, whatever the X-rays' size."""
GAP = 4
TITLE_HEIGHT = 20
SCALE_HEIGHT = 22
"""Under each panel: its colour bar (from its min to its max) and those two numbers."""
LEGEND_HEIGHT = 18
BOX_WIDTH = 2
MARK_COLOR = (0, 255, 0)
"""A marked point (the heatmap's peak): green, which inferno lacks."""
BACKGROUND = (17, 17, 17)
TEXT = (235, 235, 235)
BOX_COLORS = ((0, 255, 255), (0, 255, 0), (255, 0, 255), (255, 255, 255), (0, 128, 255), (255, 255, 0))
"""One per box label, in order of first appearance: bright hues that inferno (black to yellow) lacks."""
_FONT_SIZE = 12
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
"""What ``ImageFont.load_default`` gives: a scalable font where Pillow has FreeType, else the bitmap one."""


def colorize(values: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """(H, W) values in [0, 1] (clipped) -> (H, W, 3) float RGB in [0, 1], by matplotlib's colormap ``cmap``."""
    from matplotlib import colormaps  # lazy: keeps `import dualcam` and the CLI's start fast

    return colormaps[cmap](np.clip(values, 0.0, 1.0))[..., :3]


def overlay(image: np.ndarray, heatmap: np.ndarray, opacity: float = 0.45) -> Image.Image:
    """The image in gray with ``heatmap`` (same H, W) min-max scaled and blended on top.

    Only the picture is scaled: stored heatmaps stay raw.
    """
    gray = image.mean(axis=2) if image.ndim == 3 else image
    lo, hi = float(heatmap.min()), float(heatmap.max())
    scaled = (heatmap - lo) / (hi - lo) if hi > lo else np.zeros_like(heatmap)
    rgb = (1 - opacity) * np.repeat(gray[..., None], 3, axis=2) + opacity * colorize(scaled)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def panel_size(height: int, width: int, side: int | None = DEFAULT_SIDE) -> tuple[int, int]:
    """(pw, ph) of each panel for an H x W image: longer side ``side``, aspect kept (at least 1 px)."""
    if side is None:
        return width, height
    scale = side / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def panel_row(
    image: np.ndarray,
    panels: Sequence[tuple[str, np.ndarray]],
    *,
    boxes: Sequence[tuple[str, Box]] = (),
    marks: Sequence[tuple[float, float] | None] = (),
    side: int | None = DEFAULT_SIDE,
    opacity: float = 0.45,
) -> Image.Image:
    """The image with each (title, map) overlaid, side by side, each title above its panel and its
    colour scale (min to max of that map) below it.

    ``image`` is (H, W) or (H, W, 3) in [0, 1]; maps are on any grid (a 7 x 7 CAM, the image's
    own size) and upsampled bilinearly to the panel. ``boxes`` are (label, (x, y, w, h)) in image
    pixels, outlined on every panel in one colour per label and named in a legend below.
    ``marks``, one per panel or fewer, are (x, y) image pixels (a peak, as ``peak_x``, ``peak_y``)
    marked with a green ring, or None. Size: see the module docstring.
    """
    if not panels:
        raise ValueError("panel_row: no panels")
    if len(marks) > len(panels):
        raise ValueError(f"panel_row: {len(marks)} marks for {len(panels)} panels")
    gray = image.mean(axis=2) if image.ndim == 3 else image
    pw, ph = panel_size(gray.shape[0], gray.shape[1], side)
    small = np.asarray(Image.fromarray(gray.astype(np.float32), mode="F").resize((pw, ph), Image.Resampling.BILINEAR))
    colors = _label_colors(boxes)
    scale = (pw / gray.shape[1], ph / gray.shape[0])
    width = len(panels) * pw + (len(panels) - 1) * GAP
    height = TITLE_HEIGHT + ph + SCALE_HEIGHT + (LEGEND_HEIGHT if boxes else 0)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw, font = ImageDraw.Draw(canvas), _font()
    for i, (title, values) in enumerate(panels):
        left = i * (pw + GAP)
        values = np.asarray(values, np.float32)
        canvas.paste(overlay(small, upsample(values, (ph, pw)), opacity), (left, TITLE_HEIGHT))
        for label, box in boxes:
            draw.rectangle(_scaled(box, scale, left, pw, ph), outline=colors[label], width=BOX_WIDTH)
        mark = marks[i] if i < len(marks) else None
        if mark is not None:
            _mark(draw, left + (mark[0] + 0.5) * scale[0], TITLE_HEIGHT + (mark[1] + 0.5) * scale[1])
        text = _fit(draw, font, title, pw)
        draw.text((left + (pw - draw.textlength(text, font=font)) / 2, 3), text, fill=TEXT, font=font)
        _scale_bar(canvas, draw, font, values, left, TITLE_HEIGHT + ph, pw)
    _legend(draw, font, colors, TITLE_HEIGHT + ph + SCALE_HEIGHT)
    return canvas


def _scale_bar(canvas: Image.Image, draw: ImageDraw.ImageDraw, font: Font, values: np.ndarray,
               left: int, top: int, width: int) -> None:
    """The panel's colour bar, from its map's min (left, black) to its max (right, yellow), numbers below."""
    lo, hi = float(values.min()), float(values.max())
    if hi > lo:
        ramp = (colorize(np.tile(np.linspace(0.0, 1.0, width), (6, 1))) * 255).round().astype(np.uint8)
        canvas.paste(Image.fromarray(ramp), (left, top + 3))
        low, high = f"{lo:.3g}", f"{hi:.3g}"
        draw.text((left + 2, top + 9), low, fill=TEXT, font=font)
        draw.text((left + width - 2 - draw.textlength(high, font=font), top + 9), high, fill=TEXT, font=font)
        return
    text = _fit(draw, font, f"constant {lo:.3g}: no colour scale", width)
    draw.text((left + (width - draw.textlength(text, font=font)) / 2, top + 9), text, fill=TEXT, font=font)


def _mark(draw: ImageDraw.ImageDraw, x: float, y: float, radius: int = 7) -> None:
    """A green ring with a dot at its centre, outlined in black so it shows on any colour."""
    for width, color in ((4, (0, 0, 0)), (2, MARK_COLOR)):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=color, width=width)
    draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=MARK_COLOR)


def _label_colors(boxes: Sequence[tuple[str, Box]]) -> dict[str, tuple[int, int, int]]:
    labels = list(dict.fromkeys(label for label, _ in boxes))
    return {label: BOX_COLORS[i % len(BOX_COLORS)] for i, label in enumerate(labels)}


def _scaled(box: Box, scale: tuple[float, float], left: int, pw: int, ph: int) -> tuple[int, int, int, int]:
    """An (x, y, w, h) image box as the inclusive (x0, y0, x1, y1) canvas rectangle on one panel."""
    x, y, w, h = box
    x0, x1 = (min(max(round(v * scale[0]), 0), pw - 1) for v in (x, x + w - 1))
    y0, y1 = (min(max(round(v * scale[1]), 0), ph - 1) for v in (y, y + h - 1))
    return left + x0, TITLE_HEIGHT + y0, left + x1, TITLE_HEIGHT + y1


def _legend(draw: ImageDraw.ImageDraw, font: Font, colors: dict[str, tuple[int, int, int]], top: int) -> None:
    x = 4
    for label, color in colors.items():
        draw.rectangle((x, top + 4, x + 10, top + 14), fill=color)
        draw.text((x + 14, top + 3), label, fill=TEXT, font=font)
        x += 24 + round(draw.textlength(label, font=font))


def _fit(draw: ImageDraw.ImageDraw, font: Font, text: str, width: int) -> str:
    """``text``, cut short with an ellipsis if it would overflow its panel."""
    if draw.textlength(text, font=font) <= width - 4:
        return text
    while text and draw.textlength(text + "...", font=font) > width - 4:
        text = text[:-1]
    return text + "..."


@cache
def _font() -> Font:
    return ImageFont.load_default(size=_FONT_SIZE)
