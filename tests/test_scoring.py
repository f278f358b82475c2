"""The competition scorer: same numbers as the original, and no bad file stops a run.

Runs on the offline predictor (small CLIP tower, seconds). The images, good and bad,
are generated here in ``tmp_path``.
"""

import io
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers.models import resolve_models
from helpers.scoring import (COLUMNS, IMAGE_EXTENSIONS, PASS_THRESHOLD, CompetitionScorer, NoImagesError,
                             NothingScoredError, list_images, load_competition_scorer, open_rgb, read_scores_csv,
                             score_paths, seed_scorer, summarize, verdict, write_scores_csv)

# p_huge.png is meant to trip Pillow's limit: its warning is expected, the per-file error is tested.
pytestmark = [pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
              pytest.mark.filterwarnings("ignore:Glyph .* missing from font")]  # 猫 in a file name


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def scorer():
    """The offline competition predictor, with its head re-drawn so scores spread over ~1-10.

    The offline head's default initialisation gives scores of about 1e-4, which would make
    a 1e-4 tolerance meaningless; a head with O(1) weights and a bias of 5 does not.
    """
    s = load_competition_scorer(resolve_models(("aesthetic",), verbose=False), device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in s.predictor.layers:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0, 1.5 / math.sqrt(layer.in_features), generator=generator)
                layer.bias.zero_()
        s.predictor.layers[-1].bias.fill_(5.0)
    return s


def rich_rgb(width, height, seed):
    """A varied picture (gradients, blobs and noise) so different images score differently."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    f = rng.uniform(1, 8, 3)
    image = np.stack([np.sin(f[0] * x * 6 + seed), np.cos(f[1] * y * 6), np.sin(f[2] * (x + y) * 4)], -1)
    image = (image + 1) / 2 * 200 + rng.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def make_corpus(root):
    """Every kind of file the issue lists. Returns {name: expected error keyword or None (scored)}."""
    root.mkdir(parents=True, exist_ok=True)
    expected = {}

    def put(name, image, error=None, **kw):
        image.save(root / name, **kw)
        expected[name] = error

    put("a_rgb.jpg", rich_rgb(96, 64, 1), quality=90)
    put("b_rgba.png", rich_rgb(64, 64, 2).convert("RGBA"))
    la = rich_rgb(40, 50, 3).convert("LA")
    put("c_la.png", la)
    pal = rich_rgb(64, 48, 4).convert("P", palette=Image.Palette.ADAPTIVE)
    put("d_palette_transparent.png", pal, transparency=0)
    put("e_cmyk.jpg", rich_rgb(64, 64, 5).convert("CMYK"))
    grey16 = Image.fromarray((np.linspace(0, 65535, 64 * 32).reshape(32, 64)).astype(np.uint16))
    put("f_grey16.png", grey16)
    put("g_grey.png", rich_rgb(50, 50, 6).convert("L"))
    put("h_bilevel.png", rich_rgb(50, 50, 7).convert("1"))
    frames = [rich_rgb(48, 48, s).convert("P") for s in (8, 9, 10)]
    frames[0].save(root / "i_animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    expected["i_animated.gif"] = None
    # EXIF orientation 6 (rotate 90): stored 80x40, seen upright as 40x80.
    exif = Image.Exif()
    exif[0x0112] = 6
    put("j_exif_rotated.jpg", rich_rgb(80, 40, 11), exif=exif.tobytes())
    put("k unicode 猫 and spaces.png", rich_rgb(70, 70, 12))
    put("l_webp.webp", rich_rgb(64, 64, 13))

    good = io.BytesIO()
    rich_rgb(256, 256, 14).save(good, format="JPEG", quality=95)
    (root / "m_truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 3])
    expected["m_truncated.jpg"] = "truncated"
    (root / "n_zero_bytes.jpg").write_bytes(b"")
    expected["n_zero_bytes.jpg"] = "empty file"
    (root / "o_text_named.png").write_text("this is not a picture\n")
    expected["o_text_named.png"] = "not an image"
    put("p_huge.png", Image.new("RGB", (400, 300), "white"), error="decompression-bomb")
    os.symlink(root / "does-not-exist.png", root / "q_broken_link.png")
    expected["q_broken_link.png"] = "broken symlink"
    (root / "notes.txt").write_text("not an image extension: ignored in a folder")
    (root / ".hidden.png").write_text("hidden files are ignored")
    nested = root / "nested" / "deeper"
    nested.mkdir(parents=True)
    rich_rgb(64, 64, 15).save(nested / "r_nested.png")
    return expected


@pytest.fixture()
def corpus(tmp_path, monkeypatch):
    # p_huge.png (120,000 px) is past this limit; everything else is below it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    return tmp_path / "corpus", make_corpus(tmp_path / "corpus")


# --------------------------------------------------------------------------- the seed's scorer, kept verbatim



# --------------------------------------------------------------------------- tests

def test_same_numbers_as_the_seed_scorer(scorer, tmp_path):
    sizes = [(64, 64), (300, 200), (120, 400), (224, 224), (1000, 90), (77, 33), (512, 512)]
    paths = []
    for i, size in enumerate(sizes):
        paths.append(tmp_path / f"{i}.png")
        rich_rgb(*size, seed=100 + i).save(paths[-1])
    get_aesthetics_score = seed_scorer(scorer.predictor, scorer.processor)
    reference = [get_aesthetics_score(Image.open(p)) for p in paths]
    assert np.std(reference) > 0.05, "reference scores should differ, or the comparison proves nothing"

    df = score_paths(paths, scorer, batch_size=3, num_workers=2, progress=False)  # 3 + 3 + 1: a partial batch
    assert df["error"].eq("").all(), df
    np.testing.assert_allclose(df["score"], reference, atol=1e-4, rtol=0)
    np.testing.assert_allclose(scorer.score_images([Image.open(p) for p in paths], batch_size=4), reference,
                               atol=1e-4, rtol=0)


def test_corpus_each_file_scored_or_reported(scorer, corpus):
    folder, expected = corpus
    df = score_paths(folder, scorer, batch_size=4, num_workers=2, progress=False)
    assert list(df.columns) == COLUMNS
    names = [os.path.basename(p) for p in df["path"]]
    assert names == sorted(expected), "folder files in sorted order, non-images and hidden files skipped"
    by_name = dict(zip(names, df.to_dict("records")))
    for name, error in expected.items():
        row = by_name[name]
        if error is None:
            assert row["error"] == "" and np.isfinite(row["score"]), (name, row)
        else:
            assert math.isnan(row["score"]) and error in row["error"], (name, row)
    assert (by_name["j_exif_rotated.jpg"]["width"], by_name["j_exif_rotated.jpg"]["height"]) == (40, 80)
    assert (by_name["p_huge.png"]["width"], by_name["p_huge.png"]["height"]) == (400, 300)
    assert "MAX_IMAGE_PIXELS" in by_name["p_huge.png"]["error"]
    assert df.attrs["weights"] == "offline-random"

    summary = summarize(df)
    n_bad = sum(e is not None for e in expected.values())
    assert summary["n_scored"] == len(expected) - n_bad and summary["n_failed"] == n_bad
    assert summary["min"] <= summary["mean"] <= summary["max"]
    assert summary["passes"] == (summary["mean"] >= PASS_THRESHOLD)
    assert summary["weights"] == "offline-random" and "offline-random" in verdict(summary)


def test_recursive_adds_nested_images(scorer, corpus):
    folder, expected = corpus
    flat = list_images(folder)
    deep = list_images(folder, recursive=True)
    assert len(deep) == len(flat) + 1
    assert {p.name for p in deep} - {p.name for p in flat} == {"r_nested.png"}
    assert all(p.suffix.lower() in IMAGE_EXTENSIONS for p in deep)


def test_conversions_keep_the_picture(corpus):
    folder, _ = corpus
    grey16 = np.asarray(open_rgb(folder / "f_grey16.png"))
    assert grey16.shape == (32, 64, 3) and 100 < grey16.mean() < 155, "16-bit scaled to 8 bits, not clipped"
    assert np.asarray(open_rgb(folder / "e_cmyk.jpg")).std() > 10
    gif = Image.open(folder / "i_animated.gif")
    assert gif.n_frames == 3
    first = np.asarray(open_rgb(folder / "i_animated.gif"))
    assert np.array_equal(first, np.asarray(Image.open(folder / "i_animated.gif").convert("RGB")))
    for name in ["b_rgba.png", "c_la.png", "d_palette_transparent.png", "h_bilevel.png", "j_exif_rotated.jpg"]:
        assert open_rgb(folder / name).mode == "RGB"


def test_input_order_kept_and_workers_do_not_change_scores(scorer, tmp_path):
    paths = []
    for i in range(7):
        paths.append(tmp_path / f"img_{i}.png")
        rich_rgb(40 + 10 * i, 50, seed=i).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    shuffled = [paths[3], tmp_path / "bad.png", paths[0], paths[6], paths[1], paths[5], paths[2], paths[4]]
    a = score_paths(shuffled, scorer, batch_size=2, num_workers=2, progress=False)
    b = score_paths(shuffled, scorer, batch_size=8, num_workers=0, progress=False)
    assert list(a["path"]) == [str(p) for p in shuffled]
    assert a["error"].iloc[1] and a["error"].drop(index=1).eq("").all()
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-4, equal_nan=True)


def test_empty_and_unscorable_folders_are_errors_not_zero(scorer, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoImagesError, match="not 0"):
        score_paths(empty, scorer, progress=False)
    (empty / "sub").mkdir()
    rich_rgb(32, 32, 0).save(empty / "sub" / "x.png")
    with pytest.raises(NoImagesError, match="recursive"):
        score_paths(empty, scorer, progress=False)
    with pytest.raises(NoImagesError, match="does not exist"):
        score_paths(tmp_path / "missing", scorer, progress=False)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("nope")
    df = score_paths(bad, scorer, progress=False)
    assert df["score"].isna().all() and df["error"].ne("").all()
    with pytest.raises(NothingScoredError, match="no score"):
        summarize(df)


class OnlyScoreImages:
    """Another judge: just the three attributes of the contract (brightness, 0-10)."""

    name = "brightness"
    weights = "none"

    def score_images(self, images):
        return [float(np.asarray(im.convert("L")).mean() / 25.5) for im in images]


def test_any_scorer_with_score_images_works(tmp_path):
    for i, colour in enumerate(["black", "white", "grey"]):
        Image.new("RGB", (16, 16), colour).save(tmp_path / f"{i}.png")
    (tmp_path / "3.png").write_bytes(b"")
    df = score_paths(tmp_path, OnlyScoreImages(), batch_size=2, progress=False)
    assert df["score"].iloc[:3].round(2).tolist() == [0.0, 10.0, round(128 / 25.5, 2)]
    assert "empty" in df["error"].iloc[3]
    assert df.attrs == {"scorer": "brightness", "weights": "none"}


def test_a_failing_batch_is_narrowed_to_the_culprit(tmp_path):
    class Picky(OnlyScoreImages):
        def score_images(self, images):
            if any(im.width == 13 for im in images):
                raise RuntimeError("cannot score 13 px wide images")
            return super().score_images(images)

    for i, width in enumerate([16, 13, 16]):
        Image.new("RGB", (width, 16), "white").save(tmp_path / f"{i}.png")
    df = score_paths(tmp_path, Picky(), batch_size=3, progress=False)
    assert df["error"].tolist()[0] == "" and df["error"].tolist()[2] == ""
    assert "cannot score 13 px" in df["error"].iloc[1]


def test_csv_roundtrip_is_atomic_and_never_overwrites(scorer, corpus, tmp_path):
    from helpers.io import OutputExistsError

    folder, _ = corpus
    df = score_paths(folder, scorer, progress=False)
    csv = tmp_path / "scores.csv"
    write_scores_csv(df, csv)
    back = read_scores_csv(csv)
    assert list(back.columns) == COLUMNS and back.attrs["weights"] == "offline-random"
    np.testing.assert_allclose(back["score"], df["score"], equal_nan=True)
    assert back["error"].tolist() == df["error"].tolist()
    assert "k unicode 猫 and spaces.png" in " ".join(back["path"])
    before = csv.read_bytes()
    with pytest.raises(OutputExistsError):
        write_scores_csv(df.head(1), csv)
    assert csv.read_bytes() == before
    write_scores_csv(df.head(1), csv, overwrite=True)
    assert len(read_scores_csv(csv)) == 1
    assert not list(tmp_path.glob(".scores.csv.*")), "no temporary file left behind"


def test_scorer_device_and_dtype_defaults():
    models = resolve_models(("aesthetic",), verbose=False)
    s = load_competition_scorer(models, device="cpu")
    assert s.dtype == torch.float32 and s.weights == "offline-random" and s.name
    from aesthetics_predictor import AestheticsPredictorV2Linear
    from transformers import CLIPProcessor

    assert isinstance(s.predictor, AestheticsPredictorV2Linear) and isinstance(s.processor, CLIPProcessor)
    bf16 = CompetitionScorer(s.predictor, s.processor, weights=s.weights, device="cpu", dtype="bf16")
    assert bf16.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        CompetitionScorer(s.predictor, s.processor, weights="x", device="cpu", dtype="int3")


# --------------------------------------------------------------------------- plots

def test_plots(scorer, corpus, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers.plots import plot_score_comparison, plot_score_grid, plot_score_histogram, save_figure

    folder, _ = corpus
    df = score_paths(folder, scorer, progress=False)

    grid = plot_score_grid(df, ncols=5, max_images=None)
    titles = [ax.get_title() for ax in grid.axes if ax.get_title()]
    assert len(titles) == len(df)
    for score in df["score"].dropna():
        assert any(f"{score:.3f}" in t for t in titles)
    assert sum("not scored" in t for t in titles) == df["score"].isna().sum()
    assert "offline-random" in grid._suptitle.get_text()

    hist = plot_score_histogram(df)
    xs = {round(line.get_xdata()[0], 6) for line in hist.axes[0].lines}
    assert PASS_THRESHOLD in xs and round(summarize(df)["mean"], 6) in xs

    half = len(df) // 2
    first, second = df.iloc[:half].copy(), df.iloc[half:].copy()
    first.attrs = second.attrs = dict(df.attrs)
    comp = plot_score_comparison({"base": first, "lora": second})
    texts = [t.get_text() for t in comp.axes[0].texts]
    for part in (first, second):
        assert f"mean {part['score'].mean():.3f}" in texts
    assert [t.get_text().split("\n")[0] for t in comp.axes[0].get_xticklabels()] == ["base", "lora"]

    out = save_figure(comp, tmp_path / "compare.png")
    assert out.stat().st_size > 1000
    with pytest.raises(FileExistsError):
        save_figure(comp, out)
    plt.close("all")


def test_truncated_file_is_reported_even_if_another_library_allows_truncation(tmp_path, monkeypatch):
    from PIL import ImageFile

    from helpers.scoring import ImageLoadError

    whole = tmp_path / "whole.jpg"
    Image.new("RGB", (128, 128), "teal").save(whole, quality=95)
    cut = tmp_path / "cut.jpg"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # what `import data_juicer` does
    with pytest.raises(ImageLoadError, match="truncated"):
        open_rgb(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True, "the caller's setting is restored"
    assert open_rgb(whole).size == (128, 128)
