"""Constants taken from published guidance, each with its source, kept in one place."""

from __future__ import annotations

# --- Months of additional progress -------------------------------------------------------------
# EEF Teaching and Learning Toolkit conversion of an effect size to months' progress, as printed
# in EEF evaluation reports ("Converting effect sizes to months' progress"; Higgins et al., EEF
# Toolkit technical appendix; EEF Statistical analysis guidance for EEF evaluations, 2022).
# Each entry is (largest effect size in the band, after rounding to 2 decimals, months):
#   -0.01..0.01 -> 0, 0.02..0.09 -> 1, 0.10..0.18 -> 2, 0.19..0.26 -> 3, 0.27..0.35 -> 4,
#    0.36..0.44 -> 5, 0.45..0.52 -> 6, 0.53..0.61 -> 7, 0.62..0.69 -> 8, 0.70..0.78 -> 9,
#    0.79..0.87 -> 10, 0.88..0.95 -> 11, 0.96 and above -> 12. Negative effects mirror.
MONTHS_TABLE: tuple[tuple[float, int], ...] = (
    (0.01, 0), (0.09, 1), (0.18, 2), (0.26, 3), (0.35, 4), (0.44, 5),
    (0.52, 6), (0.61, 7), (0.69, 8), (0.78, 9), (0.87, 10), (0.95, 11),
)
MONTHS_MAX = 12  # 0.96 and above

# --- Evidence strength ("padlocks") -----------------------------------------------------------
# EEF padlock classification (EEF, "Classifying the security of EEF findings"; EEF
# Statistical analysis guidance 2022). The overall rating is the lowest of the design, MDES and
# attrition ratings, before deductions for threats to validity.
DESIGN_RATING_RANDOMISED_WITHIN_SCHOOL = 5  # a well-conducted RCT (pupils randomised within school)
# (largest MDES in the band, rating): MDES <= 0.2 -> 5, <= 0.3 -> 4, ..., <= 0.6 -> 1, above -> 0.
MDES_RATINGS: tuple[tuple[float, int], ...] = ((0.2, 5), (0.3, 4), (0.4, 3), (0.5, 2), (0.6, 1))
# (largest attrition % in the band, rating): <= 10% -> 5, <= 20% -> 4, ..., <= 50% -> 1, above -> 0.
ATTRITION_RATINGS: tuple[tuple[float, int], ...] = ((10, 5), (20, 4), (30, 3), (40, 2), (50, 1))
# Project rules for deductions (this project's documentation, docs/methods.md):
IMBALANCE_DEDUCTION_SD = 0.05  # -1 when the baseline difference exceeds 0.05 SD (WWC threshold below)
MIN_SCHOOLS_BOTH_ARMS = 5  # -1 when fewer schools than this have analysed pupils in both arms

# --- Power ------------------------------------------------------------------------------------
# Conventional design targets: 5% two-sided significance, 80% power (Bloom 1995; Dong & Maynard
# 2013, PowerUp!; EEF Statistical analysis guidance 2022).
MDES_ALPHA = 0.05
MDES_POWER = 0.80

# --- Baseline equivalence ---------------------------------------------------------------------
# What Works Clearinghouse Procedures and Standards Handbook, version 5.0 (2022), baseline
# equivalence: an absolute baseline difference of at most 0.05 SD satisfies the requirement;
# above 0.05 and up to 0.25 SD requires statistical adjustment for the baseline measure;
# above 0.25 SD the groups are not comparable.
WWC_BALANCE_FINE = 0.05
WWC_BALANCE_ADJUST = 0.25

# --- Readiness --------------------------------------------------------------------------------
# Project rule (issue 6, issue 12): a trial is estimated (status not_estimable otherwise) only when at least this many schools have
# analysed pupils in both arms; with fewer there is no between-school comparison.
READY_MIN_SCHOOLS_BOTH_ARMS = 2

# --- FSM subgroup -----------------------------------------------------------------------------
# Project rule (docs/methods.md): the FSM effect size is left blank unless at least this many
# schools have FSM pupils analysed in both arms and at least this many FSM pupils are analysed.
FSM_MIN_SCHOOLS_BOTH_ARMS = 2
FSM_MIN_PUPILS = 30

# --- Per-school pooling -----------------------------------------------------------------------
# A school enters two-stage pooling when it has at least this many analysed pupils in each arm
# (a within-arm SD needs two pupils; metafor's escalc gives NA otherwise).
MIN_PUPILS_PER_ARM = 2
# Issue 12: a school's own ANCOVA estimate also needs at least this many analysed pupils in all
# (with 4 pupils and 3-4 coefficients there are 0-1 residual degrees of freedom).
MIN_PUPILS_PER_SCHOOL_ESTIMATE = 5

# --- Disclosure control -----------------------------------------------------------------------
# Small-number suppression: a published count or per-school figure based on fewer than 10 pupils
# is suppressed (project rule, following the DfE/ONS practice of suppressing small counts in
# published pupil statistics).
SUPPRESSION_THRESHOLD = 10

# --- Normal quantile --------------------------------------------------------------------------
Z_975 = 1.959963984540054  # scipy.stats.norm.ppf(0.975), for 95% intervals
