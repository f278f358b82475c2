"""Storyboards: a comic strip's scenes as a YAML file, checked when loaded.

A storyboard is a title and a list of scenes; each scene has a caption, a positive and a
negative prompt, a seed, and optionally its own size, steps or cfg (otherwise the run's
settings apply)::

    title: 课堂上的梦
    scenes:
      - caption: 女主正在上课
        positive: 古风，水墨画，一个黑色长发少女，坐在古代书院的教室里，...
        negative: 现代风格，数字画，丑陋，变形，...
        seed: 1
        # optional: size: 1024 (or [width, height]), steps: 50, cfg: 4.0

:func:`load_storyboard` rejects a missing field, a wrong type or an unknown key with an
error naming the file, the scene and the field. :func:`parse_llm_table` turns an LLM's
markdown table reply (scene | positive | negative) into scenes, and
:func:`storyboard_from_llm_reply` / :func:`save_storyboard` write it as a storyboard file.
Taught in ``notebooks/04_comic_strip.ipynb``.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .io import write_text
from .paths import data_dir

REQUIRED = {"caption": str, "positive": str, "negative": str, "seed": int}
OPTIONAL = {"size": (int, list), "steps": int, "cfg": (int, float)}
TOP_REQUIRED = {"title": str, "scenes": list}
TOP_OPTIONAL = {"description": str}
MAX_SEED = 2**63 - 1


class StoryboardError(ValueError):
    """A storyboard file (or an LLM's table) does not have the expected shape; the message says where."""


@dataclass(frozen=True)
class Scene:
    """One panel of the strip. ``number`` counts from 1, as in the storyboard."""

    number: int
    caption: str
    positive: str
    negative: str
    seed: int
    size: tuple[int, int] | None = None  # (width, height); None: the run's size
    steps: int | None = None
    cfg: float | None = None

    def settings(self, width: int, height: int, steps: int, cfg: float) -> dict[str, Any]:
        """This scene's generation settings: its own values where set, else the run's."""
        w, h = self.size or (width, height)
        return {"width": w, "height": h, "steps": self.steps or steps,
                "cfg": float(self.cfg if self.cfg is not None else cfg), "seed": self.seed}


@dataclass(frozen=True)
class Storyboard:
    """A titled list of scenes; ``name`` (the file's stem) names the output folder."""

    title: str
    scenes: tuple[Scene, ...]
    name: str
    description: str = ""
    path: Path | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.scenes)

    def to_dict(self) -> dict[str, Any]:
        """The storyboard as the plain data its YAML file holds."""
        scenes = []
        for s in self.scenes:
            item = {"caption": s.caption, "positive": s.positive, "negative": s.negative, "seed": s.seed}
            if s.size is not None:
                item["size"] = list(s.size) if s.size[0] != s.size[1] else s.size[0]
            if s.steps is not None:
                item["steps"] = s.steps
            if s.cfg is not None:
                item["cfg"] = s.cfg
            scenes.append(item)
        data: dict[str, Any] = {"title": self.title}
        if self.description:
            data["description"] = self.description
        data["scenes"] = scenes
        return data


def storyboards_dir() -> Path:
    """Where the kit's storyboards live: ``data/storyboards/``."""
    return data_dir() / "storyboards"


def _type_name(expected) -> str:
    names = {int: "an integer", str: "a string", list: "a list", float: "a number"}
    if isinstance(expected, tuple):
        if set(expected) == {int, float}:
            return "a number"
        return " or ".join(names[t] for t in expected)
    return names[expected]


def _is(value: Any, expected) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):  # YAML yes/no: a bool is an int to Python, never to a storyboard
        return False
    return isinstance(value, types)


def _unknown_key_message(key: str, allowed) -> str:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field {key!r}{hint}; allowed: {', '.join(allowed)}"


def _check_size(value: Any, where: str) -> tuple[int, int]:
    if isinstance(value, list):
        if len(value) != 2 or not all(_is(v, int) for v in value):
            raise StoryboardError(f"{where}: field 'size' must be an integer or [width, height], got {value!r}")
        w, h = value
    else:
        w = h = value
    for v in (w, h):
        if v < 64 or v % 8:
            raise StoryboardError(f"{where}: field 'size' must be at least 64 and a multiple of 8, got {value!r}")
    return int(w), int(h)


def _scene_label(index: int, item: Any) -> str:
    caption = item.get("caption") if isinstance(item, dict) else None
    return f"scene {index}" + (f" ({caption!r})" if isinstance(caption, str) and caption else "")


def validate_storyboard(data: Any, name: str = "storyboard", source: str | None = None,
                        path: Path | None = None) -> Storyboard:
    """Check plain storyboard data (as read from YAML) and build a :class:`Storyboard`.

    Raises :class:`StoryboardError` naming the scene (1-based) and the field at fault.
    """
    src = source or name
    if not isinstance(data, dict):
        raise StoryboardError(f"{src}: a storyboard is a mapping with 'title' and 'scenes', got {type(data).__name__}")
    allowed_top = {**TOP_REQUIRED, **TOP_OPTIONAL}
    for key in data:
        if key not in allowed_top:
            raise StoryboardError(f"{src}: {_unknown_key_message(key, allowed_top)}")
    for key, expected in TOP_REQUIRED.items():
        if key not in data:
            raise StoryboardError(f"{src}: missing field {key!r}")
    for key, expected in allowed_top.items():
        if key in data and not _is(data[key], expected):
            raise StoryboardError(f"{src}: field {key!r} must be {_type_name(expected)}, "
                                  f"got {type(data[key]).__name__} {data[key]!r}")
    if not data["title"].strip():
        raise StoryboardError(f"{src}: field 'title' is empty")
    if not data["scenes"]:
        raise StoryboardError(f"{src}: field 'scenes' is empty; a storyboard needs at least one scene")

    allowed = {**REQUIRED, **OPTIONAL}
    scenes = []
    for number, item in enumerate(data["scenes"], start=1):
        where = f"{src}: {_scene_label(number, item)}"
        if not isinstance(item, dict):
            raise StoryboardError(f"{where}: a scene is a mapping of {', '.join(REQUIRED)}, got {type(item).__name__}")
        for key in item:
            if key not in allowed:
                raise StoryboardError(f"{where}: {_unknown_key_message(key, allowed)}")
        for key in REQUIRED:
            if key not in item or item[key] is None:
                raise StoryboardError(f"{where}: missing field {key!r}")
        for key, expected in allowed.items():
            if key in item and not _is(item[key], expected):
                raise StoryboardError(f"{where}: field {key!r} must be {_type_name(expected)}, "
                                      f"got {type(item[key]).__name__} {item[key]!r}")
        for key in ("caption", "positive"):
            if not item[key].strip():
                raise StoryboardError(f"{where}: field {key!r} is empty")
        if not 0 <= item["seed"] <= MAX_SEED:
            raise StoryboardError(f"{where}: field 'seed' must be between 0 and {MAX_SEED}, got {item['seed']}")
        if "steps" in item and item["steps"] < 1:
            raise StoryboardError(f"{where}: field 'steps' must be at least 1, got {item['steps']}")
        if "cfg" in item and item["cfg"] <= 0:
            raise StoryboardError(f"{where}: field 'cfg' must be positive, got {item['cfg']}")
        scenes.append(Scene(
            number=number, caption=item["caption"].strip(), positive=item["positive"].strip(),
            negative=item["negative"].strip(), seed=item["seed"],
            size=_check_size(item["size"], where) if "size" in item else None,
            steps=item.get("steps"), cfg=float(item["cfg"]) if "cfg" in item else None,
        ))
    return Storyboard(title=data["title"].strip(), scenes=tuple(scenes), name=name,
                      description=(data.get("description") or "").strip(), path=path)


def resolve_storyboard_path(path_or_name: str | os.PathLike) -> Path:
    """A path as given, or a bare name looked up in ``data/storyboards/`` (``.yaml`` added)."""
    path = Path(path_or_name)
    if path.is_file():  # a folder of the same name (e.g. a run's outputs) is not a storyboard
        return path
    for candidate in (storyboards_dir() / path, storyboards_dir() / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in storyboards_dir().glob("*.yaml"))
    raise FileNotFoundError(f"no storyboard {str(path_or_name)!r}: not a file, and not one of {known} "
                            f"in {storyboards_dir()}")


def load_storyboard(path: str | os.PathLike) -> Storyboard:
    """Read and validate a storyboard YAML file (or a name from ``data/storyboards/``).

    Raises :class:`StoryboardError` for bad YAML or a bad field (the message names the file,
    the scene and the field) and ``FileNotFoundError`` for a missing file.
    """
    path = resolve_storyboard_path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise StoryboardError(f"{path.name}: not valid YAML: {exc}") from exc
    return validate_storyboard(data, name=path.stem, source=path.name, path=path.resolve())


def dump_storyboard(storyboard: Storyboard | dict) -> str:
    """The YAML text of a storyboard (Chinese kept readable, fields in their usual order)."""
    data = storyboard.to_dict() if isinstance(storyboard, Storyboard) else storyboard
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=1000)


def save_storyboard(storyboard: Storyboard | dict, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate and write a storyboard file atomically; an existing file needs ``overwrite=True``."""
    path = Path(path)
    data = storyboard.to_dict() if isinstance(storyboard, Storyboard) else storyboard
    validate_storyboard(data, name=path.stem, source=path.name)
    return write_text(path, dump_storyboard(data), overwrite=overwrite)


# --- prompt design: the LLM's markdown table --------------------------------------------

LLM_PROMPT_FILE = "storyboard_llm.md"
_SEPARATOR_CELL = re.compile(r"^:?-+:?$")


def llm_prompt(scenes: list[str], style: str = "古风", example: str | None = None) -> str:
    """The prompt to give an LLM (``data/prompts/storyboard_llm.md``) with the scene list filled in."""
    template = (data_dir() / "prompts" / LLM_PROMPT_FILE).read_text(encoding="utf-8")
    body = template.split("<!-- prompt -->", 1)[-1].strip()
    return body.format(
        scene_count=len(scenes), style=style,
        scene_list="\n".join(f"{i}、{s}" for i, s in enumerate(scenes, start=1)),
        example=example or f"{style}，水墨画，一个黑色长发少女，坐在教室里，盯着黑板，深思，上半身，红色长裙",
    )


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells = re.split(r"(?<!\\)\|", line)
    return [c.replace("\\|", "|").strip() for c in cells]


def _clean_cell(text: str) -> str:
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.IGNORECASE)
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)  # **bold**
    text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*", r"\1", text)  # *italic*
    text = text.replace("`", "")
    return " ".join(text.split())


def parse_llm_table(text: str) -> list[dict[str, str]]:
    """Read the scenes from an LLM's markdown table reply: columns scene | positive | negative.

    Text around the table (the LLM's chatter) is ignored; ``**bold**`` is removed from cells.
    Returns one ``{"caption", "positive", "negative"}`` dict per row. Raises
    :class:`StoryboardError` naming the line when there is no table, no separator row under
    the header, a row with the wrong number of cells, or an empty scene or positive prompt.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("|")), None)
    if start is None:
        raise StoryboardError("no markdown table found in the reply; ask the LLM to answer with a table "
                              "'| 场景描述 | 正向提示词 | 反向提示词 |' and paste the whole reply")
    header = _split_row(lines[start])
    if len(header) != 3:
        raise StoryboardError(f"line {start + 1}: the table header has {len(header)} columns {header}; "
                              "expected 3: scene | positive | negative")
    if start + 1 >= len(lines) or not all(_SEPARATOR_CELL.match(c) for c in _split_row(lines[start + 1])):
        raise StoryboardError(f"line {start + 2}: expected the separator row '| --- | --- | --- |' under the header")
    rows = []
    for number in range(start + 2, len(lines)):
        line = lines[number]
        if not line.strip().startswith("|"):
            if line.strip():
                break  # the table ended; the rest is prose
            continue
        cells = _split_row(line)
        if len(cells) != 3:
            raise StoryboardError(f"line {number + 1}: a row has {len(cells)} cells, expected 3 "
                                  f"(scene | positive | negative): {line.strip()[:80]!r}")
        caption, positive, negative = (_clean_cell(c) for c in cells)
        for name, value in (("scene", caption), ("positive", positive)):
            if not value:
                raise StoryboardError(f"line {number + 1}: the {name} cell is empty")
        rows.append({"caption": caption, "positive": positive, "negative": negative})
    if not rows:
        raise StoryboardError(f"line {start + 1}: the table has a header but no rows")
    return rows


def storyboard_from_llm_reply(text: str, title: str, first_seed: int = 1, description: str = "",
                              name: str = "storyboard") -> Storyboard:
    """A validated :class:`Storyboard` from an LLM's table reply; scene *k* gets seed ``first_seed + k - 1``."""
    rows = parse_llm_table(text)
    data: dict[str, Any] = {"title": title}
    if description:
        data["description"] = description
    data["scenes"] = [{**row, "seed": first_seed + i} for i, row in enumerate(rows)]
    return validate_storyboard(data, name=name, source="LLM reply")
