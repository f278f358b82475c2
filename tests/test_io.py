"""Outputs are written atomically and never silently overwritten."""

import pytest
from PIL import Image

from helpers.io import OutputExistsError, atomic_path, save_image, write_json, write_text


def test_existing_output_is_kept_unless_asked(tmp_path):
    target = write_text(tmp_path / "a.txt", "first")
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_text(target, "second")
    assert target.read_text() == "first"
    write_text(target, "second", overwrite=True)
    assert target.read_text() == "second"


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "sub" / "b.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_json_keeps_chinese_readable_and_images_round_trip(tmp_path):
    path = write_json(tmp_path / "m.json", {"caption": "古风"})
    assert "古风" in path.read_text(encoding="utf-8")
    image = Image.new("RGB", (8, 4), "red")
    saved = save_image(image, tmp_path / "x.png")
    assert Image.open(saved).size == (8, 4)
