"""Strip layout: grid geometry, gutters, and captions that really draw Chinese glyphs."""

import warnings

import numpy as np
import pytest
from PIL import Image, ImageFont

from helpers import layout
from helpers.layout import caption_font, cjk_font_path, make_strip, render_text, strip_geometry, wrap_caption


def panels(n, size=(64, 48)):
    return [Image.new("RGB", size, (30 * i % 255, 100, 200)) for i in range(n)]


def test_default_grid_is_four_rows_by_two_like_the_baseline():
    g = strip_geometry(8, panel_size=(512, 512), gutter=0, margin=0)
    assert (g.width, g.height) == (1024, 2048)  # the baseline's 1024 x 2048 strip
    assert g.boxes[:3] == ((0, 0), (512, 0), (0, 512))
    assert g.boxes[-1] == (512, 1536)


def test_gutters_margins_captions_and_title():
    g = strip_geometry(5, rows=2, cols=3, panel_size=(100, 50), gutter=10, margin=4, caption_height=20, title_height=30)
    assert g.width == 4 + 3 * 100 + 2 * 10 + 4
    assert g.height == 4 + 30 + 2 * (50 + 20) + 10 + 4
    assert g.boxes[0] == (4, 34) and g.boxes[2] == (4 + 2 * 110, 34) and g.boxes[3] == (4, 34 + 70 + 10)


@pytest.mark.parametrize("kwargs, message", [
    (dict(count=9), "9 panels do not fit a 4 x 2 grid"),
    (dict(count=2, rows=0), "at least 1 row"),
    (dict(count=0), "no panels"),
    (dict(count=2, gutter=-1), "zero or more"),
])
def test_geometry_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        strip_geometry(**kwargs)


def test_strip_places_panels_on_the_grid():
    images = panels(3)
    strip = make_strip(images, rows=2, cols=2, gutter=6, margin=2, background="black")
    g = strip_geometry(3, 2, 2, (64, 48), 6, 2)
    assert strip.size == (g.width, g.height)
    for image, (x, y) in zip(images, g.boxes):
        assert strip.getpixel((x + 10, y + 10)) == image.getpixel((0, 0))
    assert strip.getpixel((2 + 64 + 3, 10)) == (0, 0, 0), "gutter keeps the background"
    assert strip.getpixel(g.boxes[1][:1] + (g.boxes[2][1],)) == (0, 0, 0), "the 4th cell stays empty"


def test_panels_resized_to_panel_width():
    strip = make_strip(panels(2, (128, 64)), rows=1, cols=2, panel_width=32, gutter=0, margin=0)
    assert strip.size == (64, 16)


def test_caption_count_must_match():
    with pytest.raises(ValueError, match="2 captions for 3 panels"):
        make_strip(panels(3), captions=["a", "b"])


def test_the_kit_installs_a_chinese_font():
    path = cjk_font_path()
    assert path is not None and path.is_file(), "noto-cjk-sans-otc is a dependency of the kit"
    assert caption_font(20, require_cjk=True).getname()[0] == "Noto Sans CJK SC"


def test_chinese_captions_draw_glyphs_not_tofu():
    font = caption_font(32, require_cjk=True)
    size = (48, 48)
    dream, horse = (np.asarray(render_text(c, font, size)) for c in ("梦", "马"))
    assert (dream < 128).sum() > 30 and (horse < 128).sum() > 30, "glyphs have ink"
    assert (dream != horse).sum() > 50, "two different characters give two different bitmaps"
    # The check has teeth: Pillow's default font draws both as the same empty box.
    default = ImageFont.load_default(32)
    assert np.array_equal(np.asarray(render_text("梦", default, size)), np.asarray(render_text("马", default, size)))


def test_captions_drawn_under_panels():
    images = panels(2, (128, 128))
    plain = make_strip(images, rows=1, cols=2, gutter=8)
    captioned = make_strip(images, rows=1, cols=2, gutter=8, captions=["女主正在上课", "开始睡着了"], title="课堂上的梦")
    assert captioned.height > plain.height and captioned.width == plain.width
    ink = np.asarray(captioned.convert("L"))[8 + 128 + 40:, :] < 128  # below the panels (title ~40 px)
    assert ink.sum() > 50, "caption text is drawn under the panels"


def test_long_caption_wraps_to_panel_width():
    font = caption_font(16)
    lines = wrap_caption("古风，水墨画，一个黑色长发少女，坐在古代书院的教室里，认真听讲", font, 100)
    assert len(lines) > 2 and all(font.getlength(line) <= 100 for line in lines)
    assert "".join(lines) == "古风，水墨画，一个黑色长发少女，坐在古代书院的教室里，认真听讲"
    assert wrap_caption("the quick brown fox", font, 60)[0] in {"the", "the quick"}


def test_missing_font_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(layout, "CJK_FONT_PACKAGE", "no_such_font_package")
    layout.caption_font.cache_clear()
    try:
        with pytest.warns(UserWarning, match="No Chinese font found.*noto-cjk-sans-otc"):
            font = caption_font(21)
        assert font is not None
        with pytest.raises(RuntimeError, match="No Chinese font"):
            caption_font(22, require_cjk=True)
    finally:
        layout.caption_font.cache_clear()
