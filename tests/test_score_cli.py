"""``python -m helpers.score``: options, exit status, CSV never silently overwritten."""

import subprocess
import sys

import pytest
from PIL import Image

from helpers.paths import repo_root
from helpers.score import main, parse_args
from helpers.scoring import read_scores_csv


def test_every_option_has_help():
    import argparse

    captured = {}
    original = argparse.ArgumentParser.parse_args

    def grab(self, *a, **k):
        captured["parser"] = self
        return original(self, *a, **k)

    argparse.ArgumentParser.parse_args = grab
    try:
        args = parse_args(["folder", "--csv", "x.csv", "--batch-size", "4", "--device", "cpu", "--recursive",
                           "--overwrite"])
    finally:
        argparse.ArgumentParser.parse_args = original
    assert args.batch_size == 4 and args.recursive and args.overwrite and args.device == "cpu"
    actions = [a for a in captured["parser"]._actions if not isinstance(a, argparse._HelpAction)]
    assert all(a.help for a in actions), [a.dest for a in actions if not a.help]
    with pytest.raises(SystemExit):
        parse_args(["folder", "--batch-size", "0"])


def test_help_runs_as_a_module_and_is_fast():
    done = subprocess.run([sys.executable, "-m", "helpers.score", "--help"], cwd=repo_root(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for flag in ("--csv", "--batch-size", "--device", "--recursive", "--overwrite"):
        assert flag in done.stdout
    lazy = subprocess.run([sys.executable, "-c", "import sys, helpers.score; print('torch' in sys.modules)"],
                          cwd=repo_root(), capture_output=True, text=True, timeout=60)
    assert lazy.stdout.strip() == "False", "--help must not wait for torch to import"


@pytest.fixture()
def folder(tmp_path):
    images = tmp_path / "panels"
    (images / "more").mkdir(parents=True)
    for i, colour in enumerate(["red", "navy", "gold"]):
        Image.new("RGB", (48, 48), colour).save(images / f"{i}.png")
    Image.new("RGB", (48, 48), "teal").save(images / "more" / "nested.jpg")
    (images / "broken.jpg").write_bytes(b"")
    return images


def test_scores_a_folder_and_writes_csv(folder, tmp_path, capsys):
    csv = tmp_path / "scores.csv"
    assert main(parse_args([str(folder), "--csv", str(csv), "--batch-size", "2", "--device", "cpu",
                            "--no-progress"])) == 0
    out = capsys.readouterr().out
    assert "offline-random" in out and "broken.jpg: empty file" in out and "DOES NOT QUALIFY" in out
    df = read_scores_csv(csv)
    assert len(df) == 4 and df["score"].notna().sum() == 3 and df.attrs["weights"] == "offline-random"

    before = csv.read_bytes()
    assert main(parse_args([str(folder), "--csv", str(csv), "--recursive", "--no-progress"])) == 1
    assert "already exists" in capsys.readouterr().err and csv.read_bytes() == before
    assert main(parse_args([str(folder), "--csv", str(csv), "--recursive", "--overwrite", "--no-progress"])) == 0
    assert len(read_scores_csv(csv)) == 5


def test_nothing_scorable_exits_non_zero(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(parse_args([str(empty), "--no-progress"])) == 1
    assert "no image files" in capsys.readouterr().err
    (empty / "a.png").write_text("not an image")
    csv = tmp_path / "failures.csv"
    assert main(parse_args([str(empty), "--csv", str(csv), "--no-progress"])) == 1
    assert "could be scored" in capsys.readouterr().err
    assert "not an image" in read_scores_csv(csv)["error"].iloc[0], "the failures are still written down"
