"""Laying panels out as one comic strip image: any grid, gutters, captions in Chinese.

The baseline glued 8 images with ``np.concatenate`` into 4 rows x 2 columns; here the grid,
the gutters and the margins are parameters, and each panel can carry its scene's caption.
Captions need a font with Chinese glyphs: the kit installs one (Noto Sans CJK, SIL Open
Font License, from the ``noto-cjk-sans-otc`` package) and finds it with ``importlib.resources``;
without it the captions fall back to Pillow's default font with a warning, because that
font draws every Chinese character as the same empty box ("tofu").
Taught in ``notebooks/04_comic_strip.ipynb``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

CJK_FONT_PACKAGE = "noto_cjk_sans_otc"
CJK_FONT_FILE = "NotoSansCJK-Regular.ttc"
CJK_FACE = "Noto Sans CJK SC"  # simplified Chinese forms, face 2 of the collection


def cjk_font_path() -> Path | None:
    """The installed Noto Sans CJK collection file, or None when the package is missing."""
    try:
        path = resources.files(CJK_FONT_PACKAGE).joinpath(CJK_FONT_FILE)
    except ModuleNotFoundError:
        return None
    path = Path(str(path))
    return path if path.is_file() else None


@lru_cache(maxsize=32)
def _cjk_face_index(path: str) -> int:
    for index in range(16):
        try:
            if ImageFont.truetype(path, 12, index=index).getname()[0] == CJK_FACE:
                return index
        except OSError:
            break
    return 0


@lru_cache(maxsize=32)
def caption_font(size: int = 24, require_cjk: bool = False) -> ImageFont.FreeTypeFont:
    """A font for captions: Noto Sans CJK SC at ``size`` px, or Pillow's default with a warning.

    ``require_cjk=True`` raises instead of falling back.
    """
    path = cjk_font_path()
    if path is not None:
        return ImageFont.truetype(str(path), size, index=_cjk_face_index(str(path)))
    message = (f"No Chinese font found (package {CJK_FONT_PACKAGE.replace('_', '-')!r} is not installed): "
               "captions will show Chinese characters as empty boxes. Run `make install` "
               "(or pip install noto-cjk-sans-otc) to get it.")
    if require_cjk:
        raise RuntimeError(message)
    warnings.warn(message, stacklevel=2)
    return ImageFont.load_default(size)


def render_text(text: str, font: ImageFont.FreeTypeFont, size: tuple[int, int] | None = None) -> Image.Image:
    """``text`` drawn black on white (greyscale); used to check that a font really has the glyphs."""
    if size is None:
        left, top, right, bottom = font.getbbox(text)
        size = (max(1, right) + 4, max(1, bottom) + 4)
    image = Image.new("L", size, 255)
    ImageDraw.Draw(image).text((2, 2), text, font=font, fill=0)
    return image


def wrap_caption(text: str, font: ImageFont.FreeTypeFont, max_width: int) -> list[str]:
    """Break ``text`` into lines no wider than ``max_width`` px; Chinese breaks between any characters."""
    lines, line = [], ""
    for char in text:
        if char == "\n":
            lines.append(line)
            line = ""
            continue
        if line and font.getlength(line + char) > max_width:
            # break Latin text at the last space when there is one
            cut = line.rfind(" ")
            if cut > 0 and char != " " and line[-1] != " " and char.isascii():
                lines.append(line[:cut])
                line = line[cut + 1:]
            else:
                lines.append(line.rstrip())
                line = ""
            if char == " ":
                continue
        line += char
    if line:
        lines.append(line)
    return lines


@dataclass(frozen=True)
class StripGeometry:
    """Where everything goes on the strip (pixels). ``boxes[i]`` is panel *i*'s (left, top)."""

    width: int
    height: int
    panel_size: tuple[int, int]
    title_height: int
    caption_height: int
    boxes: tuple[tuple[int, int], ...]


def strip_geometry(count: int, rows: int = 4, cols: int = 2, panel_size: tuple[int, int] = (512, 512),
                   gutter: int = 16, margin: int | None = None, caption_height: int = 0,
                   title_height: int = 0) -> StripGeometry:
    """Compute the layout of ``count`` panels on a ``rows`` x ``cols`` grid, filled row by row.

    Each cell is the panel plus ``caption_height`` below it; cells are ``gutter`` px apart,
    and the grid sits ``margin`` px (default: the gutter) inside the image's edge.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"the grid needs at least 1 row and 1 column, got {rows} x {cols}")
    if count < 1:
        raise ValueError("no panels to lay out")
    if count > rows * cols:
        raise ValueError(f"{count} panels do not fit a {rows} x {cols} grid; use more rows or columns")
    if gutter < 0 or (margin is not None and margin < 0):
        raise ValueError("gutter and margin must be zero or more")
    margin = gutter if margin is None else margin
    pw, ph = panel_size
    cell_h = ph + caption_height
    width = 2 * margin + cols * pw + (cols - 1) * gutter
    height = 2 * margin + title_height + rows * cell_h + (rows - 1) * gutter
    boxes = tuple((margin + (i % cols) * (pw + gutter), margin + title_height + (i // cols) * (cell_h + gutter))
                  for i in range(count))
    return StripGeometry(width, height, (pw, ph), title_height, caption_height, boxes)


def make_strip(images: Sequence[Image.Image | str | Path], rows: int = 4, cols: int = 2,
               panel_width: int | None = None, gutter: int = 16, margin: int | None = None,
               captions: Sequence[str] | None = None, title: str | None = None,
               font_size: int | None = None, background: str = "white",
               text_color: str = "black") -> Image.Image:
    """Lay ``images`` out as one strip: a ``rows`` x ``cols`` grid (default 4 x 2, as the baseline).

    Panels are resized to ``panel_width`` (default: the first image's width), keeping the first
    image's aspect ratio. ``captions`` (one per image) are drawn under each panel, wrapped to
    its width, in a font with Chinese glyphs (:func:`caption_font`); ``title`` goes on top.
    """
    panels = [Image.open(p).convert("RGB") if isinstance(p, (str, Path)) else p.convert("RGB") for p in images]
    if not panels:
        raise ValueError("no panels to lay out")
    if captions is not None and len(captions) != len(panels):
        raise ValueError(f"{len(captions)} captions for {len(panels)} panels; give one caption per panel")
    w0, h0 = panels[0].size
    pw = panel_width or w0
    ph = max(1, round(pw * h0 / w0))
    size = font_size or max(10, pw // 20)
    font = caption_font(size) if (captions or title) else None
    caption_lines = [wrap_caption(c, font, pw) for c in captions] if captions else []
    line_h = round(size * 1.35)
    caption_h = (max(len(lines) for lines in caption_lines) * line_h + size // 2) if caption_lines else 0
    title_font = caption_font(round(size * 1.5)) if title else None
    title_h = round(size * 1.5 * 1.35) + (gutter or size // 2) if title else 0
    geometry = strip_geometry(len(panels), rows, cols, (pw, ph), gutter, margin, caption_h, title_h)

    strip = Image.new("RGB", (geometry.width, geometry.height), background)
    draw = ImageDraw.Draw(strip)
    top_margin = geometry.boxes[0][1] - title_h
    if title:
        tw = draw.textlength(title, font=title_font)
        draw.text(((geometry.width - tw) / 2, top_margin), title, font=title_font, fill=text_color)
    for i, (panel, (x, y)) in enumerate(zip(panels, geometry.boxes)):
        if panel.size != (pw, ph):
            panel = panel.resize((pw, ph), Image.Resampling.LANCZOS)
        strip.paste(panel, (x, y))
        for k, line in enumerate(caption_lines[i] if caption_lines else []):
            lw = draw.textlength(line, font=font)
            draw.text((x + (pw - lw) / 2, y + ph + size // 4 + k * line_h), line, font=font, fill=text_color)
    return strip
