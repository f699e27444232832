"""Forest plots of per-school effect sizes with the published estimate, as SVG (page) or PNG (Dagster UI)."""

from __future__ import annotations

import html
import io
import math
import re
import textwrap

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Polygon  # noqa: E402

# Colours with at least 4.5:1 contrast on white (WCAG AA), distinguishable in greyscale.
INK = "#1b1b1b"
SCHOOL_COLOUR = "#1d4f91"
POOLED_COLOUR = "#8a3b00"
GRID_COLOUR = "#767676"

_SVG_SETTINGS = {"svg.hashsalt": "microtrials", "svg.fonttype": "none", "font.size": 10}

# Above this many schools a plot with one labelled row per school is too tall to read (0.32 inch a
# row) and slow to draw (seconds per 1,000 rows): the schools are drawn instead as one ranked band
# without labels (ranked_figure), every school still shown, the names in the trial's schools.csv.
MAX_LABELLED_SCHOOLS = 60


def escape_math(text: str) -> str:
    """Text shown literally by matplotlib: every ``$`` escaped, so ``$...$`` is never math text."""
    return str(text).replace("$", r"\$")


def wrap_title(title: str, width: int = 70, lines: int = 3) -> str:
    """``title`` on at most ``lines`` lines of ``width`` characters (long words split), the last
    ending in "…" when it is cut: a long trial name is never clipped by the figure's edge."""
    wrapped = textwrap.wrap(" ".join(str(title).split()), width, break_long_words=True) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1].rstrip() + "…"
    return "\n".join(wrapped)


def _figure(per_school: pd.DataFrame, pooled: tuple[float, float, float], title: str,
            prediction: tuple[float, float] | None) -> Figure:
    """The forest plot as a matplotlib Figure (no pyplot: no global state, thread-safe); with more
    than MAX_LABELLED_SCHOOLS schools, the ranked plot (``ranked_figure``)."""
    if len(per_school) > MAX_LABELLED_SCHOOLS:
        return ranked_figure(per_school, pooled, title, prediction)
    rows = per_school.reset_index(drop=True)
    n = len(rows)
    height = 2.4 + 0.32 * (n + 2)
    fig = Figure(figsize=(7.5, height), layout="constrained")
    ax = fig.add_subplot()
    g = pd.to_numeric(rows.get("g"), errors="coerce").to_numpy(dtype=float) if n else np.array([])
    lo = pd.to_numeric(rows.get("ci_low"), errors="coerce").to_numpy(dtype=float) if n else np.array([])
    hi = pd.to_numeric(rows.get("ci_high"), errors="coerce").to_numpy(dtype=float) if n else np.array([])
    y = np.arange(n, 0, -1) + 1.0  # schools from the top; pooled row at y = 0.5
    labels = []
    for i, row in rows.iterrows():
        n_int, n_con = row.get("n_intervention"), row.get("n_control")
        counts = ""
        if pd.notna(n_int) and pd.notna(n_con):
            counts = f" ({int(n_int)} / {int(n_con)})"
        labels.append(f"{row.get('school_urn', i + 1)}{counts}")
    shown = ~np.isnan(g)
    if shown.any():
        half = np.maximum(hi - lo, 1e-9) / 2
        weight = 1.0 / np.square(half[shown])
        sizes = 20 + 80 * weight / weight.max()
        ax.hlines(y[shown], lo[shown], hi[shown], color=SCHOOL_COLOUR, linewidth=1.4)
        ax.scatter(g[shown], y[shown], marker="s", s=sizes, color=SCHOOL_COLOUR, zorder=3,
                   label="This school on its own (its own ANCOVA, 95% CI)")
    eb_column = "eb_g" if "eb_g" in rows else None
    if eb_column is not None:
        shrunk = pd.to_numeric(rows[eb_column], errors="coerce").to_numpy(dtype=float)
        ok = ~np.isnan(shrunk) & shown
        if ok.any():
            ax.scatter(shrunk[ok], y[ok], marker="o", s=28, facecolor="white", edgecolor=INK, zorder=4,
                       label="The school's effect from the trial's model (shrunken)")
    pooled_g, pooled_lo, pooled_hi = (float(v) for v in pooled)
    x_values = [v for v in np.concatenate([lo[shown], hi[shown]]) if np.isfinite(v)]
    x_values += [v for v in (pooled_lo, pooled_hi) if math.isfinite(v)]
    if prediction is not None and all(math.isfinite(float(v)) for v in prediction):
        ax.hlines(0.5, float(prediction[0]), float(prediction[1]), color=POOLED_COLOUR, linewidth=1.2,
                  linestyle=(0, (4, 2)), label="95% prediction interval (a new school)")
        for end in prediction:
            ax.vlines(float(end), 0.35, 0.65, color=POOLED_COLOUR, linewidth=1.2)
        x_values += [float(v) for v in prediction]
    if all(math.isfinite(v) for v in (pooled_g, pooled_lo, pooled_hi)):
        diamond = Polygon([(pooled_lo, 0.5), (pooled_g, 0.85), (pooled_hi, 0.5), (pooled_g, 0.15)],
                          closed=True, color=POOLED_COLOUR, zorder=3, label="Published effect size (95% CI)")
        ax.add_patch(diamond)
    notes = rows["note"].fillna("").astype(str).to_numpy() if "note" in rows else np.array([""] * n)
    for i in np.flatnonzero(~shown):
        text = notes[i] or "not published (too few pupils or one arm)"
        ax.text(0.02, y[i], escape_math(text), va="center", ha="left",
                fontsize=8, color=INK, transform=ax.get_yaxis_transform(), style="italic")
    ax.axvline(0.0, color=GRID_COLOUR, linewidth=1)
    ax.set_yticks(list(y) + [0.5], [escape_math(t) for t in labels] + ["All schools (published)"])
    ax.set_ylim(0, (y.max() if n else 0.5) + 0.8)
    if x_values:
        left, right = min(x_values + [0.0]), max(x_values + [0.0])
        pad = 0.08 * max(right - left, 0.2)
        ax.set_xlim(left - pad, right + pad)
    ax.set_xlabel("Effect size (total-SD scale): right of 0 favours the intervention")
    ax.set_ylabel("School (pupils: intervention / control)")
    ax.set_title(escape_math(wrap_title(title)), loc="left", color=INK)
    ax.tick_params(colors=INK)
    ax.grid(axis="x", color="#d0d0d0", linewidth=0.6)
    ax.set_axisbelow(True)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside lower center", ncols=2, frameon=False, fontsize=8)
    return fig


def ranked_figure(per_school: pd.DataFrame, pooled: tuple[float, float, float], title: str,
                  prediction: tuple[float, float] | None) -> Figure:
    """The forest plot for many schools: every school with its own estimate, ranked by g from the
    highest at the top, as a line (95% CI) and a dot, without a label per school; the published
    diamond and prediction interval below, as in ``_figure``. A fixed size, whatever the number of
    schools; the school layer is drawn as an image inside an SVG (text stays text). Schools
    without their own estimate are counted in the y-axis label (their reasons are in schools.csv).
    """
    rows = per_school.reset_index(drop=True)
    g = pd.to_numeric(rows.get("g"), errors="coerce").to_numpy(dtype=float)
    lo = pd.to_numeric(rows.get("ci_low"), errors="coerce").to_numpy(dtype=float)
    hi = pd.to_numeric(rows.get("ci_high"), errors="coerce").to_numpy(dtype=float)
    shown = ~np.isnan(g)
    order = np.flatnonzero(shown)[np.argsort(-g[shown], kind="stable")]
    k = len(order)
    fig = Figure(figsize=(7.5, 6.4), layout="constrained")
    ax = fig.add_subplot()
    y = np.linspace(10.0, 1.5, k) if k > 1 else np.full(k, 5.0)  # highest g at the top; pooled row at 0.5
    x_values: list[float] = []
    if k:
        ax.hlines(y, lo[order], hi[order], color=SCHOOL_COLOUR, linewidth=0.6, alpha=0.5, rasterized=True)
        ax.scatter(g[order], y, marker="s", s=4, color=SCHOOL_COLOUR, zorder=3, rasterized=True,
                   label="This school on its own (its own ANCOVA, 95% CI), ranked")
        x_values += [v for v in np.concatenate([lo[order], hi[order]]) if np.isfinite(v)]
        if "eb_g" in rows:
            shrunk = pd.to_numeric(rows["eb_g"], errors="coerce").to_numpy(dtype=float)[order]
            ok = ~np.isnan(shrunk)
            if ok.any():
                ax.scatter(shrunk[ok], y[ok], marker="o", s=3, facecolor="none", edgecolor=INK, linewidth=0.4,
                           zorder=4, rasterized=True, label="The school's effect from the trial's model (shrunken)")
    pooled_g, pooled_lo, pooled_hi = (float(v) for v in pooled)
    x_values += [v for v in (pooled_lo, pooled_hi) if math.isfinite(v)]
    if prediction is not None and all(math.isfinite(float(v)) for v in prediction):
        ax.hlines(0.5, float(prediction[0]), float(prediction[1]), color=POOLED_COLOUR, linewidth=1.2,
                  linestyle=(0, (4, 2)), label="95% prediction interval (a new school)")
        x_values += [float(v) for v in prediction]
    if all(math.isfinite(v) for v in (pooled_g, pooled_lo, pooled_hi)):
        ax.add_patch(Polygon([(pooled_lo, 0.5), (pooled_g, 0.85), (pooled_hi, 0.5), (pooled_g, 0.15)],
                             closed=True, color=POOLED_COLOUR, zorder=5, label="Published effect size (95% CI)"))
    ax.axvline(0.0, color=GRID_COLOUR, linewidth=1)
    ax.set_yticks([0.5], ["All schools (published)"])
    ax.set_ylim(0.0, 10.5)
    if x_values:
        left, right = min(x_values + [0.0]), max(x_values + [0.0])
        pad = 0.08 * max(right - left, 0.2)
        ax.set_xlim(left - pad, right + pad)
    hidden = len(rows) - k
    ax.set_ylabel(f"{k:,} schools, ranked: highest effect at the top\n"
                  + (f"({hidden:,} without their own estimate not drawn; " if hidden else "(")
                  + "names and figures in schools.csv)", fontsize=9)
    ax.set_xlabel("Effect size (total-SD scale): right of 0 favours the intervention")
    ax.set_title(escape_math(title), loc="left", color=INK)
    ax.tick_params(colors=INK)
    ax.grid(axis="x", color="#d0d0d0", linewidth=0.6)
    ax.set_axisbelow(True)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside lower center", ncols=2, frameon=False, fontsize=8, markerscale=3)
    return fig


def _add_svg_title(svg: bytes, title: str, description: str) -> bytes:
    """Give the SVG ``role="img"``, a ``<title>`` and a ``<desc>`` so screen readers announce it."""
    text = svg.decode("utf-8")
    text = re.sub(r"^<\?xml[^>]*>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text)
    text = re.sub(r"<svg ", '<svg role="img" aria-labelledby="forest-title forest-desc" ', text, count=1)
    head_end = text.index(">", text.index("<svg")) + 1
    extra = (f'\n <title id="forest-title">{html.escape(title)}</title>'
             f'\n <desc id="forest-desc">{html.escape(description)}</desc>')
    return ('<?xml version="1.0" encoding="utf-8" standalone="no"?>\n' + text[:head_end] + extra
            + text[head_end:]).encode("utf-8")


def describe(per_school: pd.DataFrame, pooled: tuple[float, float, float]) -> str:
    """One plain-English sentence saying what the forest plot shows (its alt text)."""
    g = pd.to_numeric(per_school.get("g", pd.Series(dtype=float)), errors="coerce")
    shown = int(g.notna().sum())
    hidden = len(per_school) - shown
    pooled_g, lo, hi = pooled
    parts = [f"Forest plot of the effect size in {shown} school{'s' if shown != 1 else ''}"]
    if hidden:
        parts.append(f" ({hidden} not published: too few pupils or one arm)")
    if all(math.isfinite(float(v)) for v in pooled):
        parts.append(f"; published effect size: {pooled_g:.2f} (95% CI {lo:.2f} to {hi:.2f})")
    if shown:
        parts.append(f"; school estimates range from {g.min():.2f} to {g.max():.2f}")
    return "".join(parts) + "."


def forest_plot(per_school: pd.DataFrame, pooled: tuple[float, float, float], title: str,
                prediction: tuple[float, float] | None = None) -> bytes:
    """SVG bytes: one row per school (g with 95% CI, square sized by weight) and the published diamond.

    ``per_school`` has columns school_urn, g, ci_low, ci_high (each school's own ANCOVA effect on
    the total-SD scale: this school on its own) and optionally n_intervention, n_control, eb_g (the shrunken
    effects of the headline model,
    drawn as labelled open circles) and note (shown for a row with a blank g: one arm, too few
    pupils, suppressed; else "not published"). ``pooled`` is the published (effect_size, ci_low,
    ci_high); ``prediction`` (pi_low, pi_high) is drawn as a labelled dashed line around it.
    Titles and labels are shown literally (``$...$`` is not math text: ``escape_math``). The output is deterministic (fixed hash salt,
    no date), with text kept as text, a ``<title>`` and a ``<desc>``.
    """
    with matplotlib.rc_context(_SVG_SETTINGS):
        fig = _figure(per_school, pooled, title, prediction)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return _add_svg_title(buffer.getvalue(), title, describe(per_school, pooled))


def forest_plot_png(per_school: pd.DataFrame, pooled: tuple[float, float, float], title: str,
                    prediction: tuple[float, float] | None = None, dpi: int = 110) -> bytes:
    """The same forest plot as PNG bytes (for Dagster UI metadata)."""
    with matplotlib.rc_context({"font.size": 10}):
        fig = _figure(per_school, pooled, title, prediction)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()
