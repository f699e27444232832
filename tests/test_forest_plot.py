"""The forest plot shows what is published (issue 12 point 5) and survives math text in names (issue 15)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.patches import Polygon

from microtrials import plots
from microtrials.trials import analyse_trial
from tests.test_trial_store import _simulate


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
    assert any("Empirical-Bayes" in t for t in labels)
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
