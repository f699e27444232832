"""The forest plot shows what is published (issue 12 point 5) and survives math text in names (issue 15)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.patches import Polygon

from microtrials.publish import plots
from microtrials.stats.trials import analyse_trial
from tests.helpers.trials import simulate as _simulate


def test_diamond_is_the_published_effect_and_the_labels_say_what_is_drawn(monkeypatch):
    frame = _simulate("Maths $x^2$ and a lone $", 6, 30, seed=20)
    frame.loc[frame["school_urn"] == "100005", "arm"] = 1.0
    result = analyse_trial(frame)
    captured = {}
    real = plots._figure

    def spy(per_school, pooled, title, prediction):
        fig = real(per_school, pooled, title, prediction)
        captured["fig"] = fig
        return fig

    monkeypatch.setattr(plots, "_figure", spy)
    from pipelines.assets.trials import _forest_png

    png = _forest_png(result)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    ax = captured["fig"].axes[0]
    diamond = next(p for p in ax.patches if isinstance(p, Polygon))
    xs = diamond.get_xy()[:, 0]
    h = result.headline
    np.testing.assert_allclose([xs.min(), xs.max()], [h.ci_low, h.ci_high])
    assert np.isclose(np.median(xs), h.g)
    labels = [t.get_text() for t in captured["fig"].legends[0].get_texts()]
    assert any("prediction interval" in t for t in labels)
    assert any("shrunken" in t for t in labels) and any("on its own" in t for t in labels)
    texts = [t.get_text() for t in ax.texts]
    assert "one arm only (30 pupils in intervention)" in texts
    assert ax.get_title(loc="left") == plots.escape_math(f"{result.intervention} / {result.outcome_measure}")


def test_math_text_in_names_is_shown_literally():
    schools = pd.DataFrame({"school_urn": ["1$a$"], "n_intervention": [12], "n_control": [11], "g": [0.2],
                            "ci_low": [0.0], "ci_high": [0.4], "eb_g": [0.15], "note": [""]})
    title = "Reading $\\frac{1}{0}$ boost $"
    svg = plots.forest_plot(schools, (0.2, 0.1, 0.3), title, (-0.1, 0.5))
    assert svg.count(title.encode()) >= 2  # <title> and the drawn title: the literal name, not math
    assert plots.forest_plot_png(schools, (0.2, 0.1, 0.3), title)[:4] == b"\x89PNG"


def test_a_trial_with_many_schools_is_drawn_ranked_with_every_school_and_the_published_diamond(monkeypatch):
    n = plots.MAX_LABELLED_SCHOOLS + 140
    rng = np.random.default_rng(3)
    g = rng.normal(0.2, 0.3, n)
    schools = pd.DataFrame({"school_urn": [str(200000 + i) for i in range(n)], "n_intervention": 40,
                            "n_control": 40, "g": g, "ci_low": g - 0.4, "ci_high": g + 0.4, "eb_g": g / 2,
                            "note": ""})
    schools.loc[[5, 9], ["g", "ci_low", "ci_high", "eb_g"]] = np.nan
    schools.loc[[5, 9], "note"] = "one arm only (40 pupils in intervention)"
    captured = {}
    real = plots.ranked_figure

    def spy(*args):
        captured["fig"] = real(*args)
        return captured["fig"]

    monkeypatch.setattr(plots, "ranked_figure", spy)
    svg = plots.forest_plot(schools, (0.21, 0.17, 0.25), "Big trial", (-0.4, 0.8))
    ax = captured["fig"].axes[0]
    squares = ax.collections[1].get_offsets()
    assert len(squares) == n - 2  # every school with its own estimate is drawn, none dropped
    assert list(squares[:, 0]) == sorted(squares[:, 0], reverse=True)  # ranked, highest at the top
    assert np.all(np.diff(squares[:, 1]) < 0)
    diamond = next(p for p in ax.patches if isinstance(p, Polygon))
    np.testing.assert_allclose([diamond.get_xy()[:, 0].min(), diamond.get_xy()[:, 0].max()], [0.17, 0.25])
    assert "2 without their own estimate not drawn" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["All schools (published)"]  # no 200 labels
    assert b"Forest plot of the effect size in 198 schools (2 not published" in svg
    assert len(svg) < 200_000  # a fixed size, not one row per school


def test_trial_metadata_has_a_png_only_for_a_small_trial():
    from pipelines.assets.trials import METADATA_SCHOOLS, trial_markdown

    small = analyse_trial(_simulate("Small", 6, 30, seed=21))
    assert "data:image/png;base64," in trial_markdown(small)
    big = analyse_trial(_simulate("Big", METADATA_SCHOOLS + 10, 12, seed=22))
    text = trial_markdown(big)
    assert "data:image/png" not in text and len(text) < 12_000
    assert f"{METADATA_SCHOOLS + 10} schools" in text and "school_results" in text
    ranked = big.per_school.dropna(subset=["g"]).sort_values("g")
    for urn in list(ranked["school_urn"].head(5)) + list(ranked["school_urn"].tail(5)):
        assert f" {urn} |" in text  # the 5 lowest and 5 highest schools are named
    assert f" {ranked['school_urn'].iloc[7]} |" not in text
    assert str(round(big.headline.g, 4)) in text  # the published effect is still there
