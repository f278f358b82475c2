"""Storyboard files: loading, validation errors that name the scene and field, the LLM table parser."""

from pathlib import Path

import pytest
import yaml

from helpers.io import OutputExistsError
from helpers.storyboard import (StoryboardError, dump_storyboard, llm_prompt, load_storyboard, parse_llm_table,
                                save_storyboard, storyboard_from_llm_reply, validate_storyboard)

SEED_TABLE = """这是我最终使用的提示词：

  | 场景描述          | 正向提示词 | 反向提示词 |
| ----------------- | ----------- | ----------- |
| **女主正在上课**  | 古风，水墨画，一个黑色长发少女，坐在古代书院的教室里 | 现代风格，数字画，丑陋 |
| **开始睡着了**    | 古风，水墨画，一个黑色长发少女，伏在书桌上 | 现代风格，数字画，丑陋 |
| **下课了 梦醒了** | 古风，水墨画，黑色长发少女从书桌上抬起头 | 现代风格，数字画，丑陋 |

  #### 2. 生成图片
"""


def good():
    return {"title": "测试", "scenes": [
        {"caption": "上课", "positive": "古风，少女", "negative": "模糊", "seed": 1},
        {"caption": "睡着", "positive": "古风，伏案", "negative": "模糊", "seed": 2, "size": [128, 64],
         "steps": 3, "cfg": 5},
    ]}


def test_shipped_story_loads_with_eight_scenes():
    story = load_storyboard("classroom_dream")
    assert story.name == "classroom_dream" and story.title
    assert len(story) == 8
    assert [s.number for s in story.scenes] == list(range(1, 9))
    assert len({s.seed for s in story.scenes}) == 8, "every scene has its own seed"
    assert all(s.positive.startswith("古风") and "多余的手指" in s.negative for s in story.scenes)
    assert story.scenes[0].caption == "女主正在上课"


def test_optional_fields_override_run_settings():
    story = validate_storyboard(good(), name="t")
    assert story.scenes[0].settings(1024, 1024, 50, 4.0) == {"width": 1024, "height": 1024, "steps": 50,
                                                            "cfg": 4.0, "seed": 1}
    assert story.scenes[1].settings(1024, 1024, 50, 4.0) == {"width": 128, "height": 64, "steps": 3,
                                                            "cfg": 5.0, "seed": 2}


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["scenes"][1].pop("seed"), r"scene 2 \('睡着'\): missing field 'seed'"),
    (lambda d: d["scenes"][0].pop("negative"), r"scene 1 \('上课'\): missing field 'negative'"),
    (lambda d: d["scenes"][1].update(seed="2"), r"scene 2 .*field 'seed' must be an integer, got str"),
    (lambda d: d["scenes"][1].update(seed=True), r"scene 2 .*field 'seed' must be an integer, got bool"),
    (lambda d: d["scenes"][0].update(steps=2.5), r"scene 1 .*field 'steps' must be an integer"),
    (lambda d: d["scenes"][0].update(cfg="high"), r"scene 1 .*field 'cfg' must be a number"),
    (lambda d: d["scenes"][0].update(positive=["a"]), r"scene 1 .*field 'positive' must be a string"),
    (lambda d: d["scenes"][1].update(postive="x"), r"scene 2 .*unknown field 'postive' \(did you mean 'positive'\?\)"),
    (lambda d: d["scenes"][1].update(size=[100, 64]), r"scene 2 .*field 'size' must be at least 64 and a multiple of 8"),
    (lambda d: d["scenes"][1].update(size=[64]), r"scene 2 .*field 'size' must be an integer or \[width, height\]"),
    (lambda d: d["scenes"][0].update(caption=" "), r"scene 1 .*field 'caption' is empty"),
    (lambda d: d.pop("title"), r"missing field 'title'"),
    (lambda d: d.update(titel="x"), r"unknown field 'titel' \(did you mean 'title'\?\)"),
    (lambda d: d.update(scenes=[]), r"field 'scenes' is empty"),
    (lambda d: d["scenes"].append("just a prompt"), r"scene 3: a scene is a mapping"),
])
def test_validation_names_scene_and_field(tmp_path, mutate, expected):
    data = good()
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(StoryboardError, match=r"^bad\.yaml: " + expected):
        load_storyboard(path)


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("title: [unclosed\n", encoding="utf-8")
    with pytest.raises(StoryboardError, match="broken.yaml: not valid YAML"):
        load_storyboard(path)
    with pytest.raises(FileNotFoundError, match="classroom_dream"):
        load_storyboard("no_such_story")


def test_round_trip_and_no_silent_overwrite(tmp_path):
    story = validate_storyboard(good(), name="t")
    path = save_storyboard(story, tmp_path / "t.yaml")
    again = load_storyboard(path)
    assert again.scenes == story.scenes and again.title == story.title
    with pytest.raises(OutputExistsError):
        save_storyboard(story, path)
    save_storyboard(story, path, overwrite=True)
    assert "测试" in path.read_text(encoding="utf-8"), "Chinese is written readable, not escaped"


def test_parse_seed_table_ignores_chatter_and_bold():
    rows = parse_llm_table(SEED_TABLE)
    assert [r["caption"] for r in rows] == ["女主正在上课", "开始睡着了", "下课了 梦醒了"]
    assert rows[1]["positive"] == "古风，水墨画，一个黑色长发少女，伏在书桌上"
    assert rows[2]["negative"] == "现代风格，数字画，丑陋"


def test_llm_reply_to_storyboard_file(tmp_path):
    story = storyboard_from_llm_reply(SEED_TABLE, title="梦", first_seed=10)
    assert [s.seed for s in story.scenes] == [10, 11, 12]
    path = save_storyboard(story, tmp_path / "dream.yaml")
    assert load_storyboard(path).scenes[0].caption == "女主正在上课"
    assert yaml.safe_load(dump_storyboard(story))["scenes"][2]["seed"] == 12


@pytest.mark.parametrize("text, expected", [
    ("好的，这是提示词：古风，少女。", r"no markdown table found"),
    ("| a | b |\n|---|---|\n| x | y |", r"line 1: the table header has 2 columns"),
    ("| a | b | c |\n| x | y | z |", r"line 2: expected the separator row"),
    ("| a | b | c |\n|---|---|---|\n| x | y | z |\n| only | two |", r"line 4: a row has 2 cells, expected 3"),
    ("| a | b | c |\n|---|---|---|\n| x |  | z |", r"line 3: the positive cell is empty"),
    ("| a | b | c |\n|---|---|---|\n|  | y | z |", r"line 3: the scene cell is empty"),
    ("| a | b | c |\n|---|---|---|\n\nThat is all.", r"line 1: the table has a header but no rows"),
])
def test_malformed_table_errors(text, expected):
    with pytest.raises(StoryboardError, match=expected):
        parse_llm_table(text)


def test_escaped_pipe_stays_in_cell():
    rows = parse_llm_table("| s | p | n |\n|:--|:-:|--:|\n| a | x \\| y | z |")
    assert rows == [{"caption": "a", "positive": "x | y", "negative": "z"}]


def test_llm_prompt_template_fills_scenes():
    text = llm_prompt(["女主正在上课", "开始睡着了"], style="古风")
    assert "话剧由2张场景图片生成" in text and "1、女主正在上课\n2、开始睡着了" in text
    assert "风格为古风" in text and "| 场景描述 | 正向提示词 | 反向提示词 |" in text
    assert "{" not in text, "every placeholder is filled"
    assert Path(__file__).parents[1].joinpath("data/prompts/storyboard_llm.md").is_file()


def test_a_folder_named_like_a_storyboard_is_not_taken_for_it(tmp_path, monkeypatch):
    from helpers.storyboard import resolve_storyboard_path, storyboards_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "classroom_dream").mkdir()  # e.g. the panels folder of an earlier run
    assert resolve_storyboard_path("classroom_dream") == storyboards_dir() / "classroom_dream.yaml"
