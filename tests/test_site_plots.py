"""Forest plots never clip a long trial name or school label: the title wraps (or ends in "…"),
labels are shortened with "…", and everything drawn stays inside the figure."""

from __future__ import annotations

import pandas as pd

from microtrials.publish import plots
from microtrials.publish.site import build_site, plot_label

LONG_TITLE = ("A very long intervention name about structured paired reading with older pupils as tutors: "
              "New Group Reading Test standardised score after two terms of sessions") * 2


def _schools(labels):
    n = len(labels)
    return pd.DataFrame({"school_urn": labels, "n_intervention": [20] * n, "n_control": [21] * n,
                         "g": [0.1 + 0.05 * i for i in range(n)], "ci_low": [-0.2] * n, "ci_high": [0.5] * n,
                         "eb_g": [0.15] * n, "note": [""] * n})


def test_wrap_title_wraps_and_ends_in_an_ellipsis_when_cut():
    wrapped = plots.wrap_title(LONG_TITLE)
    lines = wrapped.split("\n")
    assert len(lines) == 3 and all(len(line) <= 70 for line in lines)
    assert lines[-1].endswith("…")
    assert plots.wrap_title("Short: title") == "Short: title"
    assert plots.wrap_title("x" * 100).split("\n") == ["x" * 70, "x" * 30]  # one long word is split, not lost


def test_title_and_labels_stay_inside_the_figure():
    labels = [plot_label(t) for t in ["111109", "111110 | Spring 2026 round with a long name", "111111"]]
    assert labels[1].endswith("…") and len(labels[1]) == 24
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plots._figure(_schools(labels), (0.2, 0.1, 0.3), LONG_TITLE, (-0.1, 0.5))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # measures every text as drawn, after the constrained layout
    renderer = canvas.get_renderer()
    box = fig.bbox
    ax = fig.axes[0]
    texts = [ax.title] + list(ax.get_yticklabels())
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1, text.get_text()
        assert extent.y0 >= box.y0 - 1 and extent.y1 <= box.y1 + 1, text.get_text()


def test_the_published_svg_holds_the_wrapped_title(monkeypatch):
    from tests.helpers.site import BASE
    evidence = pd.DataFrame([dict(BASE, intervention=LONG_TITLE[:150], outcome_measure="NGRT")])
    schools = {(LONG_TITLE[:150], "NGRT"): _schools(["111109", "111110", "111111"])}
    files = build_site(evidence, schools, pd.DataFrame(), "d", "r")
    svg = next(v for k, v in files.items() if k.endswith("forest.svg")).decode()
    assert "A very long intervention name about structured paired reading with" in svg
