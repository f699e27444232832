# Reference figures for the multisite (random-slope) headline, from lme4 fitted to a tight tolerance.
# Run from the repository root (needs R with lme4 and jsonlite; the tests never run R):
#   Rscript scripts/r/multisite_reference.R
# Writes tests/fixtures/reference/multisite.json and tests/fixtures/reference-eef/multisite.json.
suppressMessages({library(lme4); library(jsonlite)})

tight <- lmerControl(optimizer = "nloptwrap", calc.derivs = FALSE,
                     optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-15, xtol_rel = 1e-12, ftol_rel = 1e-15,
                                    maxeval = 100000))

read_extracts <- function(folder) {
  files <- sort(list.files(folder, pattern = "\\.csv$", full.names = TRUE))
  d <- do.call(rbind, lapply(files, function(f) {
    x <- read.csv(f, colClasses = c(school_urn = "character"))
    if (!"fsm" %in% names(x)) x$fsm <- NA
    x[, c("school_urn", "intervention", "arm", "baseline", "outcome", "fsm")]
  }))
  d$t <- as.numeric(tolower(d$arm) == "intervention")
  d$fsm01 <- ifelse(d$fsm == "Y", 1, ifelse(d$fsm == "N", 0, NA))
  d
}

slope_fit <- function(d, k) {
  m <- lmer(outcome ~ t + baseline + (1 + t | school_urn), data = d, REML = TRUE, control = tight)
  vc <- as.data.frame(VarCorr(m))
  re <- ranef(m)$school_urn
  list(
    formula = "outcome ~ t + baseline + (1 + t | school_urn), REML (nloptwrap, xtol_abs 1e-12)",
    beta = unname(fixef(m)["t"]), se = unname(sqrt(diag(vcov(m)))[2]),
    fixef = as.list(fixef(m)), theta = unname(getME(m, "theta")),
    sigma = sigma(m), var_intercept = vc$vcov[1], var_slope = vc$vcov[2], cov = vc$vcov[3],
    sd_intercept = vc$sdcor[1], sd_slope = vc$sdcor[2], corr = vc$sdcor[3],
    reml_criterion = unname(REMLcrit(m)), singular = isSingular(m),
    ranef = data.frame(school_urn = rownames(re), intercept = re[, 1], arm = re[, 2])
  )
}

ri_fit <- function(d) {
  m <- lmer(outcome ~ t + baseline + (1 | school_urn), data = d, REML = TRUE, control = tight)
  vc <- as.data.frame(VarCorr(m))
  list(formula = "outcome ~ t + baseline + (1 | school_urn), REML", beta = unname(fixef(m)["t"]),
       se = unname(sqrt(diag(vcov(m)))[2]), var_school = vc$vcov[1], var_pupil = vc$vcov[2],
       reml_criterion = unname(REMLcrit(m)))
}

# The published figures, computed from lme4's estimates by the contract's formulas (section 2).
published <- function(rs, sd_total, k, n1, n0) {
  g <- rs$beta / sd_total; se <- rs$se / sd_total; tau <- rs$sd_slope / sd_total
  s_new <- sqrt(se^2 + tau^2); crit <- qt(0.975, k - 1)
  v <- rs$sigma^2 * (1 / n1 + 1 / n0); w <- 1 / v   # each school's within-school sampling variance
  typical <- (length(v) - 1) * sum(w) / (sum(w)^2 - sum(w^2))
  list(effect_size = g, ci_low = g - qnorm(0.975) * se, ci_high = g + qnorm(0.975) * se,
       p_value = 2 * pnorm(-abs(rs$beta / rs$se)), tau = tau,
       i2 = 100 * rs$var_slope / (rs$var_slope + typical),
       pi_low = g - crit * s_new, pi_high = g + crit * s_new, p_new_school_benefits = pt(g / s_new, k - 1),
       k = k, shrunken = data.frame(school_urn = rs$ranef$school_urn, eb_g = g + rs$ranef$arm / sd_total))
}

trial_figures <- function(d) {
  a <- d[!is.na(d$outcome), ]
  null <- lmer(outcome ~ 1 + (1 | school_urn), data = a, REML = TRUE, control = tight)
  vc0 <- as.data.frame(VarCorr(null))$vcov
  sd_total <- sqrt(sum(vc0))
  counts <- table(a$school_urn, a$t)
  both <- rownames(counts)[counts[, "0"] > 0 & counts[, "1"] > 0]
  rs <- slope_fit(a)
  n1 <- counts[both, "1"]; n0 <- counts[both, "0"]
  out <- list(pupils_analysed = nrow(a), schools = length(unique(a$school_urn)), schools_both_arms = length(both),
              null_model = list(var_school = vc0[1], var_pupil = vc0[2], sd_total = sd_total),
              random_slope = rs, random_intercept = ri_fit(a),
              published = published(rs, sd_total, length(both), n1, n0))
  f <- a[!is.na(a$fsm01) & a$fsm01 == 1, ]
  if (nrow(f) >= 30) {
    fs <- slope_fit(f)
    fi <- ri_fit(f)
    out$fsm_only <- list(pupils = nrow(f), random_slope = fs[c("formula", "beta", "se", "theta", "sd_slope", "singular", "reml_criterion")],
                         random_intercept = fi,
                         effect_size = fs$beta / sd_total, ci_low = (fs$beta - qnorm(0.975) * fs$se) / sd_total,
                         ci_high = (fs$beta + qnorm(0.975) * fs$se) / sd_total)
  }
  out
}

write_reference <- function(folder, out) {
  d <- read_extracts(file.path(folder, "extracts"))
  res <- lapply(split(d, d$intervention), trial_figures)
  res$`_made_by` <- paste("scripts/r/multisite_reference.R; R", getRversion(), "lme4", packageVersion("lme4"))
  writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, pretty = TRUE, dataframe = "rows"), file.path(folder, out))
}

write_reference("tests/fixtures/reference", "multisite.json")
write_reference("tests/fixtures/reference-eef", "multisite.json")
