"""The jury sheet on small generated images, judged by the offline (small-CLIP) predictor."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.io import OutputExistsError
from helpers.jury import (consistency, embed_and_score, judge_images, jury_sheet, similarity_matrix,
                          write_jury_sheet)
from helpers.scoring import NoImagesError


@pytest.fixture(scope="module")
def scorer():
    from helpers.scoring import load_competition_scorer

    return load_competition_scorer(device="cpu")


def noise(seed, size=48, tint=(0, 0, 0)):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (size, size, 3)) + np.array(tint)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_consistency_math():
    embeds = np.array([[1.0, 0.0], [1.0, 0.1], [0.9, 0.0], [0.0, 1.0]])
    sim = similarity_matrix(embeds)
    assert sim.shape == (4, 4) and np.allclose(np.diag(sim), 1.0) and np.allclose(sim, sim.T)
    per_panel, strip, odd = consistency(embeds)
    assert odd == 3, "the orthogonal panel is the odd one out"
    assert per_panel[3] == pytest.approx(sim[3, :3].mean())
    assert strip == pytest.approx(sim[np.triu_indices(4, 1)].mean())
    assert consistency(np.ones((3, 5)))[1] == pytest.approx(1.0)
    _, _, odd2 = consistency(embeds[:2])
    assert odd2 is None
    with pytest.raises(ValueError, match="at least 2"):
        consistency(embeds[:1])
    with pytest.raises(ValueError, match="zero length"):
        similarity_matrix(np.zeros((2, 3)))


def test_embeddings_match_the_scores(scorer):
    images = [noise(1), noise(2)]
    scores, embeds = embed_and_score(scorer, images)
    assert np.allclose(scores, scorer.score_images(images), atol=1e-4), "one pass gives the scorer's own scores"
    assert embeds.shape[0] == 2 and np.allclose(np.linalg.norm(embeds, axis=1), 1.0, atol=1e-4)


def test_jury_sheet_for_a_run_folder(scorer, tmp_path):
    run = tmp_path / "story" / "base"
    run.mkdir(parents=True)
    for i in range(3):
        noise(i, tint=(120, 40, 40)).save(run / f"panel_{i + 1:02d}.png")
    Image.new("RGB", (48, 48), (255, 255, 255)).save(run / "panel_04.png")  # the white one is unlike the rest
    (run / "panel_05.png").write_bytes(b"not a png")  # a bad panel is reported, not fatal
    (run / "manifest.json").write_text(json.dumps({"weights": "offline-random"}))

    sheet = jury_sheet(run, scorer)
    t, s = sheet.table, sheet.summary
    assert list(t["panel"]) == [1, 2, 3, 4, 5]
    assert t.loc[4, "error"] and np.isnan(t.loc[4, "aesthetic"]) and np.isnan(t.loc[4, "consistency"])
    assert s["n_judged"] == 4 and s["n_failed"] == 1
    assert s["aesthetic_mean"] == pytest.approx(t["aesthetic"].mean())
    assert s["consistency"] == pytest.approx(sheet.similarity[:4, :4][np.triu_indices(4, 1)].mean())
    assert s["odd_one_out"] == int(t.loc[t["consistency"].idxmin(), "panel"]) and t["odd_one_out"].sum() == 1
    assert s["passes"] == (s["aesthetic_mean"] >= 6.0)
    assert s["weights"] == "offline-random" and s["panel_weights"] == "offline-random"
    assert "offline-random" in sheet.verdict() and "consistency" in sheet.verdict()

    written = write_jury_sheet(sheet)
    assert {p.name for p in written.values()} == {"jury.csv", "jury.json", "jury.png"}
    csv = pd.read_csv(written["csv"])
    assert list(csv["weights"].unique()) == ["offline-random"] and len(csv) == 5
    summary = json.loads(written["json"].read_text())
    assert summary["odd_one_out"] == s["odd_one_out"] and len(summary["similarity"]) == 5
    assert Image.open(written["png"]).size[0] > 200
    with pytest.raises(OutputExistsError):
        write_jury_sheet(sheet)
    # the sheet's own files are never taken for panels
    assert len(jury_sheet(run, scorer).table) == 5


def test_bad_inputs(scorer, tmp_path):
    with pytest.raises(NoImagesError, match="generate the panels first"):
        jury_sheet(tmp_path, scorer)
    noise(0).save(tmp_path / "panel_01.png")
    with pytest.raises(ValueError, match="at least 2"):
        judge_images([tmp_path / "panel_01.png", tmp_path / "missing.png"], scorer)
    with pytest.raises(TypeError, match="load_competition_scorer"):
        embed_and_score(object(), [noise(0)])
