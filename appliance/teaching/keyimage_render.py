"""A case's key image as a picture for slides: the frame as the viewer shows it, annotations drawn.

The frame is rendered by ``appliance.imaging.render`` (the key image's Window, else the file's own
window, as /instances/{id}/rendered does), cropped to the key image's Zoom around its Center (as
the GSPS Displayed Area), and its annotations are drawn with Pillow in the contract's coordinates:
image pixels, x = column, y = row, (0, 0) the top-left corner of the top-left pixel, scaled to the
picture; lengths say what ``keyobjects.length_label`` says. Blocking: callers run it in a worker
thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..imaging.render import MAX_OUTPUT_SIDE, RenderRequest, encode_image, load, render
from .keyobjects import length_label, view_box

__all__ = ["FORMATS", "render_key_image", "draw_key_image", "length_label"]

FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}
MIN_SIDE = 512          # a small frame (an ultrasound cine, a 256 MR) is enlarged to this for a slide
COLOR = (255, 221, 0)   # the viewer's annotation yellow
OUTLINE = (0, 0, 0)     # every stroke and letter has a dark outline: readable on white bone and black air


def _window(key_image: dict[str, Any]) -> tuple[float | None, float | None]:
    w = key_image.get("Window")
    if isinstance(w, dict) and w.get("Width") and float(w["Width"]) > 0:
        return float(w["Center"]), float(w["Width"])
    return None, None


def _crop_box(cols: int, rows: int, zoom: float | None, center: Any = None) -> tuple[float, float, float, float]:
    """The part of the frame the viewer shows at ``zoom`` around ``center`` (``keyobjects.view_box``,
    as the GSPS Displayed Area): the whole frame at 1 or less (a slide has no viewport to shrink into)."""
    if not zoom or float(zoom) <= 1:
        return 0.0, 0.0, float(cols), float(rows)
    return view_box(cols, rows, zoom, center)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)   # Pillow's own FreeType font: no system font needed
    except (TypeError, OSError):                   # Pillow built without FreeType
        return ImageFont.load_default()


def draw_key_image(img: Image.Image, annotations: list[dict[str, Any]], frame_size: tuple[int, int],
                   zoom: float | None = None, center: Any = None) -> Image.Image:
    """``img`` (the rendered frame, any size) cropped to ``zoom`` around ``center`` and enlarged to at least
    MIN_SIDE, with ``annotations`` (image pixel coordinates of a frame of ``frame_size``
    columns x rows) drawn on it; an RGB picture."""
    cols, rows = frame_size
    sx0, sy0 = img.width / cols, img.height / rows          # frame pixels -> rendered pixels
    x0, y0, x1, y1 = _crop_box(cols, rows, zoom, center)
    img = img.convert("RGB")
    if (x0, y0, x1, y1) != (0, 0, cols, rows):
        img = img.crop((round(x0 * sx0), round(y0 * sy0), round(x1 * sx0), round(y1 * sy0)))
    side = max(img.size)
    target = min(max(side, MIN_SIDE, round(max(cols, rows) * sx0)), MAX_OUTPUT_SIDE)
    if side != target:
        k = target / side
        img = img.resize((max(1, round(img.width * k)), max(1, round(img.height * k))), Image.Resampling.BILINEAR)
    scale_x, scale_y = img.width / (x1 - x0), img.height / (y1 - y0)

    def at(p: Sequence[float]) -> tuple[float, float]:
        return (float(p[0]) - x0) * scale_x, (float(p[1]) - y0) * scale_y

    draw = ImageDraw.Draw(img)
    lw = max(3, round(max(img.size) / 200))
    font = _font(max(12, round(max(img.size) / 32)))

    def stroke_line(a, b) -> None:
        draw.line([a, b], fill=OUTLINE, width=lw + 2 * max(1, lw // 2))
        draw.line([a, b], fill=COLOR, width=lw)

    def label(xy: tuple[float, float], text: str, anchor: str = "la") -> None:
        draw.text(xy, text, fill=COLOR, font=font, anchor=anchor, stroke_width=max(2, lw // 2 + 1),
                  stroke_fill=OUTLINE)

    for a in annotations:
        pts = [at(p) for p in a.get("Points") or []]
        kind = a.get("Type")
        if kind == "arrow" and len(pts) == 2:
            (tx, ty), (hx, hy) = pts
            angle = math.atan2(hy - ty, hx - tx)
            head = max(5 * lw, 18)
            left = (hx - head * math.cos(angle - 0.45), hy - head * math.sin(angle - 0.45))
            right = (hx - head * math.cos(angle + 0.45), hy - head * math.sin(angle + 0.45))
            base = ((left[0] + right[0]) / 2, (left[1] + right[1]) / 2)
            stroke_line((tx, ty), base)
            draw.polygon([(hx, hy), left, right], fill=COLOR, outline=OUTLINE, width=max(1, lw // 2))
            if a.get("Text"):
                label((tx, ty), str(a["Text"]), "rm" if hx > tx else "lm")
        elif kind == "ellipse" and len(pts) == 2:
            (ax, ay), (bx, by) = pts
            box = [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]
            draw.ellipse(box, outline=OUTLINE, width=lw + 2 * max(1, lw // 2))
            draw.ellipse(box, outline=COLOR, width=lw)
            if a.get("Text"):
                label((box[2], box[1]), str(a["Text"]), "lb")
        elif kind == "text" and len(pts) >= 1:
            label(pts[0], str(a.get("Text") or ""))
        elif kind == "length" and len(pts) == 2:
            (ax, ay), (bx, by) = pts
            stroke_line((ax, ay), (bx, by))
            nx, ny = -(by - ay), bx - ax           # short ticks across each end
            norm = math.hypot(nx, ny) or 1.0
            nx, ny = nx / norm * 2 * lw, ny / norm * 2 * lw
            for (px, py) in ((ax, ay), (bx, by)):
                stroke_line((px - nx, py - ny), (px + nx, py + ny))
            text = length_label(a)
            if a.get("Text"):
                text = f"{a['Text']}: {text}"
            label(((ax + bx) / 2 + nx * 2, (ay + by) / 2 + ny * 2), text, "lm")
    return img


def render_key_image(part10: bytes, key_image: dict[str, Any], fmt: str = "png", quality: int = 90) -> bytes:
    """A key image as PNG or JPEG (``FORMATS``): its frame with its Window and Zoom, its annotations
    drawn. Raises imaging's DecodeError / FrameNotFound for a frame that cannot be shown."""
    ds = load(part10)
    center, width = _window(key_image)
    frame = int(key_image.get("Frame") or 1) - 1
    img = render(ds, RenderRequest(frame=frame, mode="rendered", center=center, width=width))
    cols = int(ds.get("Columns", img.width) or img.width)
    rows = int(ds.get("Rows", img.height) or img.height)
    out = draw_key_image(img, list(key_image.get("Annotations") or []), (cols, rows), key_image.get("Zoom"),
                         key_image.get("Center"))
    return encode_image(out, fmt, quality)
