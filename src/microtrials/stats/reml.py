"""Exact REML for school random-intercept (and arm-slope) models from per-school sufficient statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import duckdb
import numpy as np
import pandas as pd
from scipy import linalg, optimize
from threadpoolctl import threadpool_limits

from microtrials.ingest import warehouse
from microtrials.errors import MicrotrialsError
from microtrials.stats.models import ARM, ARM_FSM, BASELINE, BASELINE_MISSING, FSM, INTERCEPT, MixedFit, design_formula

# The columns of the per-school cell table (sql/matched_cells.sql, ``cells_from_frame``): the keys
# of a cell, then its pupil count and sums. A design column is a function of the keys times 1 or b.
CELL_KEYS: tuple[str, ...] = ("school_urn", "arm", "fsm", "has_outcome", "has_baseline")
CELL_SUMS: tuple[str, ...] = ("n", "sum_b", "sum_bb", "sum_y", "sum_yy", "sum_by")
# The usual design columns, in the order the statistics carry them when nothing else is asked.
DESIGN_COLUMNS: tuple[str, ...] = (INTERCEPT, ARM, BASELINE, FSM, ARM_FSM)

# lme4's isSingular(): a relative-covariance Cholesky diagonal below this is on the boundary.
SINGULAR_TOL = 1e-4
# Converged when the Newton step H^-1 g in theta is below this (lme4's checkConv uses 0.002).
NEWTON_TOL = 1e-4


@dataclass(frozen=True)
class SchoolStats:
    """Per-group cross-products of named design columns and the outcome y.

    For group j (a school, or a school within a round) with design rows X_j (n_j x p, columns
    ``columns``) and outcomes y_j: ``XtX[j] = X_j'X_j``, ``Xty[j] = X_j'y_j``, ``yty[j] = y_j'y_j``.
    The random-effect design Z_j is a subset of the columns of X_j (intercept, and arm for a
    random slope), so Z'Z, Z'X and Z'y are selections. Any column (a missing-baseline indicator,
    round dummies) is one more column; any grouping is one more set of groups.
    """

    schools: np.ndarray  # group label per group (school_urn), shape (J,)
    n: np.ndarray  # pupils per group, shape (J,)
    XtX: np.ndarray  # shape (J, p, p)
    Xty: np.ndarray  # shape (J, p)
    yty: np.ndarray  # shape (J,)
    columns: tuple[str, ...] = DESIGN_COLUMNS
    centres: tuple[float, float] = (0.0, 0.0)  # (outcome, baseline) the sums are about (common_centre)

    @property
    def n_obs(self) -> int:
        """Total pupils analysed."""
        return int(self.n.sum())

    def _index(self, names: list[str]) -> list[int]:
        missing = [c for c in names if c not in self.columns]
        if missing:
            raise MicrotrialsError(
                f"the statistics have no column(s) {missing} (they hold {list(self.columns)}); "
                "build them with that column (for fsm: need_fsm=True; for baseline: use_baseline=True)"
            )
        return [self.columns.index(c) for c in names]

    def select(self, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(X'X, X'y) per group restricted to the named design columns: shapes (J,p,p), (J,p)."""
        idx = self._index(columns)
        return self.XtX[:, idx][:, :, idx], self.Xty[:, idx]

    def cross(self, rows: list[str], columns: list[str]) -> np.ndarray:
        """Per-group cross-products between two sets of design columns, e.g. Z'X: shape (J,q,p)."""
        r, c = self._index(rows), self._index(columns)
        return self.XtX[:, r][:, :, c]


def trial_cells(
    con: duckdb.DuckDBPyConnection, interventions: list[str], outcome_measures: list[str]
) -> pd.DataFrame:
    """One trial's cell sums, by the pipeline's own query ``sql/matched_cells.sql``.

    ``interventions`` / ``outcome_measures``: every spelling of the trial's two names; every
    delivered (spelling, school, round) combination of them (``sql/delivered_combos.sql``) is taken.
    """
    from microtrials.stats.units import combo_key  # units imports the registry; keep it out of import time

    combos = con.execute(warehouse.sql("delivered_combos")).df()
    wanted = combos[combos["intervention"].isin(list(interventions))
                    & combos["outcome_measure"].isin(list(outcome_measures))]
    keys = [combo_key(i, o, u, r) for i, o, u, r in
            zip(wanted["intervention"], wanted["outcome_measure"], wanted["school_urn"], wanted["round"])]
    return con.execute(warehouse.sql("matched_cells"), {"keys": keys}).df()


def cells_from_frame(data: pd.DataFrame, extra_keys: tuple[str, ...] = ()) -> pd.DataFrame:
    """The cell sums of ``sql/matched_cells.sql`` from a frame of one trial's pupil rows.

    ``data`` has columns school_urn, arm (1/0), outcome, baseline (may be missing), fsm (1/0/missing),
    and any ``extra_keys`` (e.g. ``round``) that split the cells further. As in the SQL, outcome and
    baseline are summed about their means (``outcome_centre``, ``baseline_centre``).
    """
    base = data["baseline"].astype(float) if "baseline" in data else pd.Series(np.nan, index=data.index)
    y = data["outcome"].astype(float)
    cy = float(y.mean()) if y.notna().any() else 0.0
    cb = float(base.mean()) if base.notna().any() else 0.0
    base, y = base - cb, y - cy
    frame = pd.DataFrame({
        "school_urn": data["school_urn"].astype(str),
        "arm": data["arm"].astype(float),
        "fsm": data["fsm"].astype(float) if "fsm" in data else np.nan,
        "has_outcome": y.notna(),
        "has_baseline": base.notna(),
        **{k: data[k] for k in extra_keys},
        "n": 1,
        "sum_b": base.fillna(0.0),
        "sum_bb": base.fillna(0.0) ** 2,
        "sum_y": y.fillna(0.0),
        "sum_yy": y.fillna(0.0) ** 2,
        "sum_by": (base * y).fillna(0.0),
    })
    cells = frame.groupby([*CELL_KEYS, *extra_keys], dropna=False, sort=True).sum().reset_index()
    cells["n"] = cells["n"].astype(np.int64)
    cells["outcome_centre"], cells["baseline_centre"] = cy, cb
    return cells


CENTRES: tuple[str, ...] = ("outcome_centre", "baseline_centre")


def common_centre(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells whose sums are about one outcome centre and one baseline centre (the first row's).

    sql/matched_cells.sql and :func:`cells_from_frame` sum outcome and baseline about a centre
    (their mean), so scores with a large common offset (e.g. +10,000,000) keep their precision;
    cells of several queries (one per round) may have different centres, moved here exactly:
    with d = old centre - new centre, S(x - new) = S(x - old) + n d and
    S((x - new)^2) = S((x - old)^2) + 2 d S(x - old) + n d^2 (and the same for the cross-product).
    Cells without centre columns are returned as they are (sums about 0).
    """
    if cells.empty or not set(CENTRES) <= set(cells.columns):
        return cells
    cells = cells.copy()
    cy, cb = (cells[c].to_numpy(dtype=float) for c in CENTRES)
    dy, db = cy - cy[0], cb - cb[0]
    if not (dy.any() or db.any()):
        return cells
    n = cells["n"].to_numpy(dtype=float)
    ny = np.where(cells["has_outcome"].to_numpy(dtype=bool), n, 0.0)
    nb = np.where(cells["has_baseline"].to_numpy(dtype=bool), n, 0.0)
    nby = np.where(cells["has_baseline"].to_numpy(dtype=bool), ny, 0.0)
    sy, sb = cells["sum_y"].to_numpy(dtype=float), cells["sum_b"].to_numpy(dtype=float)
    cells["sum_by"] = cells["sum_by"] + np.where(nby > 0, dy * sb + db * sy + nby * db * dy, 0.0)
    cells["sum_yy"] = cells["sum_yy"] + 2 * dy * sy + ny * dy**2
    cells["sum_bb"] = cells["sum_bb"] + 2 * db * sb + nb * db**2
    cells["sum_y"], cells["sum_b"] = sy + ny * dy, sb + nb * db
    cells["outcome_centre"], cells["baseline_centre"] = cy[0], cb[0]
    return cells


def conditioning_cause(stats: SchoolStats) -> str:
    """The likely cause of an ill-conditioned fit, in plain words, from the pooled design.

    Looks at the correlation matrix of the design columns over all pupils: nearly collinear columns
    (condition number over 1e8) are named; then columns (and scores) whose sizes differ by more than
    1e8; then whether the outcome hardly varies compared with its size.
    """
    names = [c for c in stats.columns if c != INTERCEPT]
    XtX, Xty = stats.XtX.sum(axis=0), stats.Xty.sum(axis=0)
    n = float(stats.n.sum())
    idx = [stats.columns.index(c) for c in names]
    if len(idx) >= 2 and n > 1 and INTERCEPT in stats.columns:
        i0 = stats.columns.index(INTERCEPT)
        mean = XtX[i0, idx] / n
        cov = XtX[np.ix_(idx, idx)] / n - np.outer(mean, mean)
        sd = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
        corr = cov / np.outer(sd, sd)
        cond = float(np.linalg.cond(corr))
        if not cond < 1e8:
            worst = np.unravel_index(np.argmax(np.abs(corr - np.eye(len(idx)))), corr.shape)
            return (f"the model's columns {names[worst[0]]} and {names[worst[1]]} are nearly the same "
                    f"(condition number {cond:.1e})")
    rms = np.sqrt(np.append(np.diag(XtX), stats.yty.sum()) / max(n, 1.0))
    rms = rms[rms > 0]
    if rms.size >= 2 and not rms.max() / rms.min() < 1e8:
        return (f"the scores' sizes differ from the other columns' by a factor of {rms.max() / rms.min():.0e} "
                "(e.g. scores recorded in very different units)")
    spread = float(stats.yty.sum() - Xty[0] ** 2 / n) / n if n else 0.0
    if spread <= 1e-12 * max(float(stats.yty.sum()) / max(n, 1.0), 1e-300):
        return "the outcome scores hardly vary compared with their size"
    return "the variation between schools or in the arm effect is close to 0 or very large compared with pupils'"


def _design_column(cells: pd.DataFrame, name: str, baseline_fill: float) -> tuple[np.ndarray, np.ndarray]:
    """A design column over the cells as (c, d): each pupil's value is c + d * baseline.

    Intercept 1; arm; baseline (a pupil without one takes ``baseline_fill``); baseline_missing
    1/0; fsm (unknown counts as 0) and arm:fsm; any other name is a 0/1 (or numeric) column of
    ``cells`` itself, e.g. a round dummy.
    """
    ones = np.ones(len(cells))
    arm = cells["arm"].to_numpy(dtype=float)
    fsm = cells["fsm"].astype(float).fillna(0.0).to_numpy()
    has_b = cells["has_baseline"].to_numpy(dtype=bool)
    if name == INTERCEPT:
        return ones, 0 * ones
    if name == ARM:
        return arm, 0 * ones
    if name == BASELINE:
        return np.where(has_b, 0.0, baseline_fill), has_b.astype(float)
    if name == BASELINE_MISSING:
        return (~has_b).astype(float), 0 * ones
    if name == FSM:
        return fsm, 0 * ones
    if name == ARM_FSM:
        return arm * fsm, 0 * ones
    if name in cells:
        return cells[name].to_numpy(dtype=float), 0 * ones
    raise MicrotrialsError(f"unknown design column {name!r}: add it to the cell table first")


def stats_from_cells(
    cells: pd.DataFrame,
    columns: list[str] | tuple[str, ...],
    *,
    baseline_fill: float = 0.0,
    group: str = "school_urn",
) -> SchoolStats:
    """X'X, X'y, y'y per group for the named design columns, from cell sums (rows already chosen).

    Each cell holds n pupils who share every design value except baseline b, so with a column
    written as c + d b, and M = [[n, Sb, Sy], [Sb, Sbb, Sby], [Sy, Sby, Syy]] the cell's moments
    of (1, b, y): [X y]'[X y] = L M L' with L's rows (c, d, 0) per column and (0, 0, 1) for y;
    groups sum their cells. A pupil without a baseline has b = ``baseline_fill`` (Sb etc. of such
    cells are 0 in the table, so the fill enters only through c).
    """
    cells = common_centre(cells)
    columns = tuple(columns)
    k = len(columns)
    L = np.zeros((len(cells), k + 1, 3))
    for i, name in enumerate(columns):
        L[:, i, 0], L[:, i, 1] = _design_column(cells, name, baseline_fill)
    L[:, k, 2] = 1.0
    s = {c: cells[c].to_numpy(dtype=float) for c in CELL_SUMS}
    M = np.stack([
        np.stack([s["n"], s["sum_b"], s["sum_y"]], axis=-1),
        np.stack([s["sum_b"], s["sum_bb"], s["sum_by"]], axis=-1),
        np.stack([s["sum_y"], s["sum_by"], s["sum_yy"]], axis=-1),
    ], axis=1)
    per_cell = np.einsum("cia,cab,cjb->cij", L, M, L)
    labels, where = np.unique(cells[group].astype(str).to_numpy(), return_inverse=True)
    full = np.zeros((len(labels), k + 1, k + 1))
    np.add.at(full, where, per_cell)
    n = np.zeros(len(labels), dtype=np.int64)
    np.add.at(n, where, cells["n"].to_numpy(dtype=np.int64))
    centres = (float(cells[CENTRES[0]].iloc[0]), float(cells[CENTRES[1]].iloc[0])) if (
        len(cells) and set(CENTRES) <= set(cells.columns)) else (0.0, 0.0)
    return SchoolStats(
        schools=labels, n=n, XtX=full[:, :k, :k].copy(), Xty=full[:, :k, k].copy(),
        yty=full[:, k, k].copy(), columns=columns, centres=centres,
    )


def choose_cells(
    cells: pd.DataFrame, *, use_baseline: bool, fsm_only: bool = False, need_fsm: bool = False,
    complete_baseline: bool = True,
) -> pd.DataFrame:
    """The cells of the pupils a model analyses: an outcome; a baseline when ``use_baseline`` and
    ``complete_baseline`` (else pupils without one stay, for the missing-indicator method); FSM
    pupils only; FSM known."""
    keep = cells["has_outcome"].to_numpy(dtype=bool) & (cells["n"].to_numpy() > 0)
    if use_baseline and complete_baseline:
        keep &= cells["has_baseline"].to_numpy(dtype=bool)
    if fsm_only:
        keep &= (cells["fsm"] == 1).to_numpy()
    if need_fsm:
        keep &= cells["fsm"].notna().to_numpy()
    return cells.loc[keep]


def _standard_columns(use_baseline: bool, fsm_known: bool) -> list[str]:
    return [INTERCEPT, ARM] + ([BASELINE] if use_baseline else []) + ([FSM, ARM_FSM] if fsm_known else [])


def school_stats(
    con: duckdb.DuckDBPyConnection,
    intervention: str,
    outcome_measure: str,
    *,
    use_baseline: bool,
    fsm_only: bool = False,
    need_fsm: bool = False,
) -> SchoolStats:
    """Complete-case statistics of one trial from the warehouse (:func:`trial_cells`).

    Columns [1, arm, baseline (when used), fsm, arm:fsm (when FSM is known or FSM only)].
    """
    cells = choose_cells(trial_cells(con, [intervention], [outcome_measure]),
                         use_baseline=use_baseline, fsm_only=fsm_only, need_fsm=need_fsm)
    return stats_from_cells(cells, _standard_columns(use_baseline, need_fsm or fsm_only))


def school_stats_from_frame(
    data: pd.DataFrame,
    *,
    use_baseline: bool,
    fsm_only: bool = False,
    need_fsm: bool = False,
) -> SchoolStats:
    """The same statistics as :func:`school_stats` from a frame of one trial's pupils.

    ``data`` has columns school_urn, outcome, arm (1/0), baseline, fsm (1/0/missing); the row
    filters are those of :func:`choose_cells` (no outcome; no baseline when used; FSM only; FSM unknown).
    """
    cells = choose_cells(cells_from_frame(data), use_baseline=use_baseline, fsm_only=fsm_only, need_fsm=need_fsm)
    return stats_from_cells(cells, _standard_columns(use_baseline, need_fsm or fsm_only))


@dataclass(frozen=True)
class _Problem:
    """The statistics one fit needs: sums over schools plus the per-school Z-blocks.

    Z is [1] (random intercept, q = 1) or [1, arm] (random slope, q = 2). The blocks are stored
    padded to q = 2 (zeros for the missing slope), random-effect index first and school last
    (``ZtZ[a, b]`` is a length-J array), so each per-school step is a few elementwise operations.
    ``cross`` holds, per school and per entry (00, 01 + 10, 11) of a symmetric 2 x 2 W_j, the
    products that W_j multiplies in A, b and y'Vt^-1 y: [vec(X_a'X_b^T), X_a y_b, y_a y_b] (see
    ``_profile``), stacked as (3 J, p^2 + p + 1), so those sums are one matrix-vector product.
    """

    names: list[str]
    q: int
    n_obs: int
    sum_XtX: np.ndarray  # (p, p)
    sum_Xty: np.ndarray  # (p,)
    sum_yty: float
    ZtZ: np.ndarray  # (2, 2, J)
    ZtX: np.ndarray  # (2, J, p)
    Zty: np.ndarray  # (2, J)
    cross: np.ndarray  # (3 J, p^2 + p + 1)


@dataclass(frozen=True)
class _Profile:
    """Everything the profiled REML deviance computes at one theta."""

    deviance: float
    beta: np.ndarray
    sigma2: float
    A: np.ndarray  # X' Vt^-1 X
    W: np.ndarray  # (3, J): the entries 00, 01, 11 of Lambda M_j^-1 Lambda'


def _lambda(theta: np.ndarray) -> np.ndarray:
    """Relative covariance factor: Lambda = [[t0]] or [[t0, 0], [t1, t2]]; Sigma = sigma2 Lambda Lambda'."""
    if len(theta) == 1:
        return np.array([[theta[0]]])
    return np.array([[theta[0], 0.0], [theta[1], theta[2]]])


def _woodbury(theta: np.ndarray, ZtZ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per school W_j = Lambda M_j^-1 Lambda' (entries 00, 01, 11) and log|M_j|, M_j = I + Lambda' Z_j'Z_j Lambda.

    Then (I + Z_j Lambda Lambda' Z_j')^-1 = I - Z_j W_j Z_j' and log|I + Z Lambda Lambda' Z'| = log|M_j|.
    With Z_j'Z_j = [[a, b], [b, c]] and Lambda = [[t0, 0], [t1, t2]] (t1 = t2 = 0 for a random
    intercept): M = [[1 + t0^2 a + 2 t0 t1 b + t1^2 c, t2 (t0 b + t1 c)], [., 1 + t2^2 c]], inverted
    in closed form, elementwise over schools.
    """
    t0, t1, t2 = (float(theta[0]), 0.0, 0.0) if len(theta) == 1 else (float(t) for t in theta)
    a, b, c = ZtZ[0, 0], ZtZ[0, 1], ZtZ[1, 1]
    m00 = 1.0 + t0 * t0 * a + 2.0 * t0 * t1 * b + t1 * t1 * c
    m01 = t2 * (t0 * b + t1 * c)
    m11 = 1.0 + t2 * t2 * c
    det = m00 * m11 - m01 * m01
    i00, i01, i11 = m11 / det, -m01 / det, m00 / det
    w00 = t0 * t0 * i00
    w01 = t0 * (t1 * i00 + t2 * i01)
    w11 = t1 * t1 * i00 + 2.0 * t1 * t2 * i01 + t2 * t2 * i11
    return np.array([w00, w01, w11]), np.log(det)


def _profile(problem: _Problem, theta: np.ndarray) -> _Profile:
    """Profiled REML deviance at theta (lme4's REML criterion, Bates et al. 2015, eq. 42).

    With Vt = I + Z Lambda Lambda' Z' (so V = sigma2 Vt), per-school Woodbury sums give
    A = X'Vt^-1 X = sum X'X - sum_j X_j'Z_j W_j Z_j'X_j, b = X'Vt^-1 y, y'Vt^-1 y (the W-weighted
    sums in one product with ``problem.cross``); then beta = A^-1 b, r2 = y'Vt^-1 y - beta'b,
    sigma2 = r2 / (N - p) and
    -2 l_R = sum_j log|M_j| + log|A| + (N - p) (1 + log(2 pi r2 / (N - p))).
    """
    W, logdet_m = _woodbury(theta, problem.ZtZ)
    p = len(problem.sum_Xty)
    weighted = W.reshape(-1) @ problem.cross
    A = problem.sum_XtX - weighted[: p * p].reshape(p, p)
    b = problem.sum_Xty - weighted[p * p: p * p + p]
    yvy = problem.sum_yty - float(weighted[-1])
    dof = problem.n_obs - p
    try:
        chol = linalg.cho_factor(A, lower=True)
    except linalg.LinAlgError:
        return _Profile(np.inf, np.full(p, np.nan), np.nan, A, W)
    beta = linalg.cho_solve(chol, b)
    r2 = float(yvy - beta @ b)
    if not r2 > 0:
        return _Profile(np.inf, beta, np.nan, A, W)
    logdet_a = 2.0 * float(np.sum(np.log(np.diag(chol[0]))))
    deviance = float(np.sum(logdet_m)) + logdet_a + dof * (1.0 + np.log(2.0 * np.pi * r2 / dof))
    return _Profile(deviance, beta, r2 / dof, A, W)


def _gradient(problem: _Problem, theta: np.ndarray, prof: _Profile) -> np.ndarray:
    """Exact gradient of the profiled REML deviance with respect to theta.

    With D_k = d(Lambda Lambda')/d theta_k, d(-2 l_R)/d theta_k = tr(D_k S) where
    S = sum_j [G_j - H_j A^-1 H_j' - e_j e_j' / sigma2], G_j = Z_j'Vt_j^-1 Z_j,
    H_j = Z_j'Vt_j^-1 X_j and e_j = Z_j'Vt_j^-1 (y_j - X_j beta); each Z_j'Vt_j^-1 = (I - K_j) Z_j'
    with K_j = Z_j'Z_j W_j. So the gradient is 2 S Lambda read at the lower-triangle entries theta indexes.
    """
    a, b, c = problem.ZtZ[0, 0], problem.ZtZ[0, 1], problem.ZtZ[1, 1]
    w00, w01, w11 = prof.W
    k00, k01 = a * w00 + b * w01, a * w01 + b * w11
    k10, k11 = b * w00 + c * w01, b * w01 + c * w11
    X0, X1 = problem.ZtX
    H0 = (1.0 - k00)[:, None] * X0 - k01[:, None] * X1
    H1 = (1.0 - k11)[:, None] * X1 - k10[:, None] * X0
    r0, r1 = problem.Zty[0] - X0 @ prof.beta, problem.Zty[1] - X1 @ prof.beta
    e0, e1 = (1.0 - k00) * r0 - k01 * r1, (1.0 - k11) * r1 - k10 * r0
    A_inv = linalg.inv(prof.A)
    HA0 = H0 @ A_inv
    s00 = float(np.sum(a - k00 * a - k01 * b) - np.sum(HA0 * H0) - e0 @ e0 / prof.sigma2)
    if problem.q == 1:
        return np.array([2.0 * s00 * theta[0]])
    s01 = float(np.sum(b - k00 * b - k01 * c) - np.sum(HA0 * H1) - e0 @ e1 / prof.sigma2)
    s11 = float(np.sum(c - k10 * b - k11 * c) - np.sum((H1 @ A_inv) * H1) - e1 @ e1 / prof.sigma2)
    grad = 2.0 * np.array([[s00, s01], [s01, s11]]) @ _lambda(theta)
    return np.array([grad[0, 0], grad[1, 0], grad[1, 1]])


def _optimise_intercept(deviance: Callable[[np.ndarray], float]) -> tuple[np.ndarray, bool]:
    """Minimise over t0 >= 0: a grid on log t0 to bracket the minimum, then bounded Brent."""
    grid = np.concatenate([[0.0], np.logspace(-4, 2, 49)])
    values = np.array([deviance(np.array([t])) for t in grid])
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = optimize.minimize_scalar(
        lambda t: deviance(np.array([t])),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-12 * max(hi, 1.0)},
    )
    best = np.array([float(res.x)])
    if values[0] <= res.fun + 1e-12 * abs(res.fun):  # the boundary t0 = 0 is as good (to rounding)
        best = np.array([0.0])
    at_grid_end = i == len(grid) - 1  # school SD over 100 x the pupil SD: not a trustworthy optimum
    return best, bool(res.success) and np.isfinite(min(values[0], res.fun)) and not at_grid_end


def _optimise_slope(problem: _Problem, theta0: float) -> tuple[np.ndarray, bool]:
    """Minimise over (t0, t1, t2) with t0, t2 >= 0: L-BFGS-B with the exact gradient, then Newton.

    L-BFGS-B starts from near the random-intercept optimum (t0, 0, 0.1) and stops at a relative
    change of 1e-10; Newton steps polish the point (``_newton_polish``). An interior point where
    the Newton step is below ``NEWTON_TOL`` is the optimum. Otherwise (a boundary point, or no
    convergence) it also starts from lme4's (1, 0, 1) -- the REML surface can have a second,
    singular local minimum, which one start alone can fall into (Chem97 with female as the arm:
    (1, 0, 1) alone ends there, 25 units of deviance worse) -- and restarts off the boundary.
    """

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        prof = _profile(problem, theta)
        if not np.isfinite(prof.deviance):
            return np.inf, np.zeros(3)
        return prof.deviance, _gradient(problem, theta, prof)

    def run(start: list[float]) -> optimize.OptimizeResult:
        return optimize.minimize(objective, np.asarray(start, dtype=float), jac=True, method="L-BFGS-B",
                                 bounds=_SLOPE_BOUNDS, options={"ftol": 1e-10, "gtol": 1e-7, "maxiter": 1000})

    best = run([max(theta0, 0.1), 0.0, 0.1])
    theta, step = _newton_polish(objective, np.asarray(best.x, dtype=float))
    if theta[0] > 0.0 and theta[2] > 0.0 and step < NEWTON_TOL:
        return theta, bool(np.isfinite(best.fun))
    other = run([1.0, 0.0, 1.0])
    if other.fun < objective(theta)[0]:
        best, theta = other, np.asarray(other.x, dtype=float)
    if theta[0] == 0.0 or theta[2] == 0.0:
        theta = _escape_boundary(run, theta, objective(theta)[0])
    theta, step = _newton_polish(objective, theta)
    return theta, bool(np.isfinite(best.fun)) and step < NEWTON_TOL


_SLOPE_BOUNDS = [(0.0, np.inf), (-np.inf, np.inf), (0.0, np.inf)]
_NONNEGATIVE = np.array([True, False, True])  # t0 and t2 are Cholesky diagonals


def _escape_boundary(
    run: Callable[[list[float]], optimize.OptimizeResult],
    theta: np.ndarray,
    value: float,
) -> np.ndarray:
    """A singular optimum (t0 or t2 = 0) found by L-BFGS-B: restart just off the bound(s).

    Near the boundary the Cholesky parametrisation is ill-conditioned (at t0 = 0 only t1^2 + t2^2
    matters, so +t1 and -t1 are the same point there but lead off the bound in opposite
    directions), so gradient steps can stall there; keep whichever point has the lowest deviance.
    """
    step = 0.1 * max(float(np.max(np.abs(theta))), 0.1)
    t0, t1, t2 = theta
    starts = [[step, t1, t2], [step, -t1, t2], [t0, t1, step], [step, t1, step], [step, -t1, step]]
    for start in starts:
        res = run(start)
        if res.fun < value:
            theta, value = np.asarray(res.x, dtype=float), float(res.fun)
    return theta


def _newton_polish(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]], theta: np.ndarray, iterations: int = 6
) -> tuple[np.ndarray, float]:
    """Newton steps from theta while they lower the deviance; returns the point and its last step size.

    Each step is H^-1 g over the free parameters (``_newton_step``), kept inside the bounds; a
    step that does not lower the deviance is not taken. The size returned is lme4's convergence
    measure max |H^-1 g| at the point returned.
    """
    value = objective(theta)[0]
    for _ in range(iterations):
        step = _newton_step(objective, theta)
        size = float(np.max(np.abs(step))) if np.all(np.isfinite(step)) else np.inf
        if not np.isfinite(size) or size < 1e-10:
            return theta, size
        trial = theta - step
        trial[_NONNEGATIVE] = np.maximum(trial[_NONNEGATIVE], 0.0)
        trial_value = objective(trial)[0]
        if not trial_value <= value:
            return theta, size
        theta, value = trial, trial_value
    return theta, float(np.max(np.abs(_newton_step(objective, theta))))


def _newton_step(objective: Callable[[np.ndarray], tuple[float, np.ndarray]], theta: np.ndarray) -> np.ndarray:
    """The Newton step H^-1 g at theta over the free parameters (0 for the others): lme4's
    convergence check is max |H^-1 g| < 0.002.

    g is the exact gradient, H its forward difference (step 1e-6 of the parameter's size); a
    parameter at its bound (t0 or t2 = 0) with the gradient pushing outwards is not free.
    """
    grad = objective(theta)[1]
    at_bound = (theta == 0.0) & (grad > 0) & _NONNEGATIVE
    free = np.flatnonzero(~at_bound)
    step = np.zeros(len(theta))
    if free.size == 0:
        return step
    hess = np.empty((len(theta), len(theta)))
    for i in range(len(theta)):
        up = theta.copy()
        up[i] += 1e-6 * max(abs(theta[i]), 1e-2)
        hess[:, i] = (objective(up)[1] - grad) / (up[i] - theta[i])
    sub = 0.5 * (hess + hess.T)[np.ix_(free, free)]
    try:
        step[free] = np.linalg.solve(sub, grad[free])
    except np.linalg.LinAlgError:
        step[:] = np.inf
    return step


def _problem(stats: SchoolStats, covariates: list[str], random_slope: bool) -> _Problem:
    """Check the requested model against the statistics and gather the sums it needs."""
    if BASELINE in covariates and BASELINE not in stats.columns:
        raise MicrotrialsError("baseline requested: build the statistics with school_stats(..., use_baseline=True)")
    if {FSM, ARM_FSM} & set(covariates) and not {FSM, ARM_FSM} <= set(stats.columns):
        raise MicrotrialsError("fsm requested: build the statistics with school_stats(..., need_fsm=True)")
    names = [INTERCEPT, *covariates]
    XtX, Xty = stats.select(names)
    z = [INTERCEPT, ARM] if random_slope else [INTERCEPT]
    q, J = len(z), len(stats.n)
    ZtZ, ZtX, Zty = np.zeros((2, 2, J)), np.zeros((2, J, len(names))), np.zeros((2, J))
    ZtZ[:q, :q] = stats.cross(z, z).transpose(1, 2, 0)
    ZtX[:q] = stats.cross(z, names).transpose(1, 0, 2)
    Zty[:q] = stats.select(z)[1].T

    def products(i: int, k: int) -> np.ndarray:  # what W_j[i, k] multiplies, per school
        outer = np.einsum("jp,js->jps", ZtX[i], ZtX[k]).reshape(J, -1)
        return np.hstack([outer, ZtX[i] * Zty[k][:, None], (Zty[i] * Zty[k])[:, None]])

    return _Problem(
        names=names, q=q, n_obs=stats.n_obs, sum_XtX=XtX.sum(axis=0), sum_Xty=Xty.sum(axis=0),
        sum_yty=float(stats.yty.sum()), ZtZ=ZtZ, ZtX=ZtX, Zty=Zty,
        cross=np.vstack([products(0, 0), products(0, 1) + products(1, 0), products(1, 1)]),
    )


def fit_reml(stats: SchoolStats, covariates: list[str], random_slope: bool = False) -> MixedFit:
    """Fit ``outcome ~ covariates + (1 | school)`` (or ``(1 + arm | school)``) by REML from ``stats``.

    Model: y_j = X_j beta + Z_j b_j + e_j, b_j ~ N(0, sigma2 Lambda Lambda'), e_j ~ N(0, sigma2 I).
    sigma2 and beta are profiled out (see ``_profile``) and the REML deviance is minimised over
    the Cholesky factor theta of the relative covariance (t0 >= 0, t2 >= 0), as lme4 does.
    Reports cov_params = sigma2 A^-1 with A = X'Vt^-1 X (lme4's vcov), the REML log-likelihood
    -deviance / 2 (lme4's and statsmodels' constant), BLUPs b_j = W_j (Z_j'y_j - Z_j'X_j beta),
    and ``singular`` when a diagonal of theta is below 1e-4 (lme4's isSingular).
    """
    problem = _problem(stats, covariates, random_slope)
    p = len(problem.names)
    if problem.n_obs <= p:
        raise MicrotrialsError(f"only {problem.n_obs} pupils for {p} fixed effects: too few to fit the model")

    def deviance(theta: np.ndarray) -> float:
        return _profile(problem, np.asarray(theta, dtype=float)).deviance

    # One BLAS thread: the problem is thousands of tiny operations, and OpenBLAS threads woken by
    # one of them spin against each other (on 2 busy cores a fit ran 3 times slower).
    with threadpool_limits(limits=1, user_api="blas"):
        if random_slope:  # start the slope search from the random-intercept optimum (t1 = t2 = 0)
            intercept = _problem(stats, covariates, False)
            grid = np.logspace(-3, 1, 9)  # a start, not an estimate: the nearest half-decade will do
            t0 = grid[int(np.argmin([_profile(intercept, np.array([t])).deviance for t in grid]))]
            theta, converged = _optimise_slope(problem, float(t0))
        else:
            theta, converged = _optimise_intercept(deviance)
    return _mixed_fit(stats, problem, theta, converged, random_slope)


def _uncentred(names: list[str], beta: np.ndarray, cov: np.ndarray,
               centres: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The fixed effects on the scores' own scale: sums about (c_y, c_b) leave every coefficient but
    the intercept as it is, and intercept = intercept' + c_y - beta_baseline c_b (a linear map T,
    so cov = T cov' T')."""
    c_y, c_b = centres
    if INTERCEPT not in names or (c_y == 0.0 and c_b == 0.0):
        return beta, cov
    T = np.eye(len(names))
    shift = np.zeros(len(names))
    i0 = names.index(INTERCEPT)
    shift[i0] = c_y
    if BASELINE in names:
        T[i0, names.index(BASELINE)] = -c_b
    return T @ beta + shift, T @ cov @ T.T


def fit_at(stats: SchoolStats, covariates: list[str], theta: np.ndarray, random_slope: bool = False) -> MixedFit:
    """The model at given relative-covariance parameters theta (no optimising): beta, sigma2 profiled.

    theta is the Cholesky factor of Sigma / sigma2 (``[t0]`` or ``[t0, t1, t2]``); useful to
    evaluate the REML likelihood at another fitter's estimates.
    """
    problem = _problem(stats, covariates, random_slope)
    return _mixed_fit(stats, problem, np.asarray(theta, dtype=float), True, random_slope)


def _mixed_fit(
    stats: SchoolStats, problem: _Problem, theta: np.ndarray, converged: bool, random_slope: bool
) -> MixedFit:
    """Package the fit at theta: Sigma = sigma2 Lambda Lambda', vcov = sigma2 A^-1, BLUPs."""
    best = _profile(problem, theta)
    if not np.isfinite(best.deviance):
        raise MicrotrialsError("the design is rank-deficient (a covariate is constant or duplicated): drop it")
    names = problem.names
    lam = _lambda(theta)
    sigma = best.sigma2 * lam @ lam.T
    beta, cov = _uncentred(names, best.beta, best.sigma2 * linalg.inv(best.A), stats.centres)
    cov = pd.DataFrame(cov, index=names, columns=names)
    r0, r1 = problem.Zty - problem.ZtX @ best.beta
    w00, w01, w11 = best.W
    blups = pd.DataFrame(
        np.column_stack([w00 * r0 + w01 * r1, w01 * r0 + w11 * r1])[:, : problem.q],
        index=pd.Index(stats.schools, name="school_urn"),
        columns=["intercept", "arm"] if random_slope else ["intercept"],
    )
    diag = theta[[0, 2]] if random_slope else theta[:1]
    return MixedFit(
        formula=f"{design_formula(names[1:])} + ({'1 + arm' if random_slope else '1'} | school), REML",
        params=dict(zip(names, map(float, beta))),
        cov_params=cov,
        var_school=float(sigma[0, 0]),
        var_pupil=float(best.sigma2),
        loglik_reml=-0.5 * best.deviance,
        converged=converged,
        singular=bool(np.any(diag < SINGULAR_TOL)),
        n_obs=problem.n_obs,
        n_groups=int(np.count_nonzero(stats.n)),
        var_slope=float(sigma[1, 1]) if random_slope else None,
        cov_school_slope=float(sigma[0, 1]) if random_slope else None,
        blups=blups,
        method="sufficient-statistics REML",
        messages=(f"theta = {theta.tolist()}",),
        theta=tuple(float(t) for t in theta),
    )
