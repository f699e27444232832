# lme4 on the A-level chemistry data (mlmRev Chem97: 31,022 pupils, 2,410 schools), for
# benchmarks/bench_reml.py --chem97 and tests/test_reml_chem97.py (which never run R).
# Run from the repository root:  Rscript benchmarks/r/chem97_lme4.R
# Writes tests/fixtures/chem97/pupils.csv.gz (school, arm, female, score, gcsescore) and
# tests/fixtures/chem97/lme4.json (lme4's estimates, default and tight tolerance, and its timings).
suppressMessages({library(lme4); library(mlmRev); library(jsonlite)})
data(Chem97)
d <- Chem97[order(as.integer(Chem97$school), as.integer(Chem97$student)), ]
d$school <- as.character(d$school)
# The arm, assigned deterministically: alternate pupils within each school (in student order),
# starting with intervention in odd-numbered schools and control in even-numbered ones.
pos <- ave(seq_len(nrow(d)), d$school, FUN = seq_along)
d$arm <- as.numeric((pos + as.integer(d$school)) %% 2 == 0)
d$female <- as.numeric(d$gender == "F")
out <- data.frame(school = d$school, arm = d$arm, female = d$female, score = d$score, gcsescore = d$gcsescore)
con <- gzfile("tests/fixtures/chem97/pupils.csv.gz", "w"); write.csv(out, con, row.names = FALSE); close(con)

tight <- lmerControl(optimizer = "nloptwrap", calc.derivs = FALSE,
                     optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-15, xtol_rel = 1e-12, ftol_rel = 1e-15, maxeval = 100000))

summarise <- function(m) {
  vc <- as.data.frame(VarCorr(m))
  re <- ranef(m)$school
  list(fixef = as.list(fixef(m)), se = as.list(sqrt(diag(vcov(m)))), theta = unname(getME(m, "theta")),
       sigma = sigma(m), var_intercept = vc$vcov[1], var_slope = vc$vcov[2], cov = vc$vcov[3],
       reml_criterion = unname(REMLcrit(m)), singular = isSingular(m),
       ranef_first10 = data.frame(school = rownames(re)[1:10], intercept = re[1:10, 1], slope = re[1:10, 2]))
}

fit_both <- function(formula, label) {
  runs <- sapply(1:5, function(i) {
    t <- system.time(lmer(formula, data = d, REML = TRUE))
    c(elapsed = t[["elapsed"]], cpu = t[["user.self"]] + t[["sys.self"]])
  })
  m <- lmer(formula, data = d, REML = TRUE)
  mt <- lmer(formula, data = d, REML = TRUE, control = tight)
  cat(label, "lme4 default: median", median(runs["elapsed", ]), "s elapsed,", median(runs["cpu", ]), "s CPU\n")
  list(formula = deparse(formula), seconds = unname(runs["elapsed", ]), seconds_median = median(runs["elapsed", ]),
       cpu_seconds = unname(runs["cpu", ]), cpu_seconds_median = median(runs["cpu", ]),
       default = summarise(m), tight = summarise(mt))
}

res <- list(
  made_by = paste("benchmarks/r/chem97_lme4.R; R", getRversion(), "lme4", packageVersion("lme4"),
                  "mlmRev", packageVersion("mlmRev"), "; lmer default control, elapsed and CPU seconds of 5 runs on this machine"),
  pupils = nrow(d), schools = length(unique(d$school)),
  arm = lapply(list(score ~ arm + gcsescore + (1 + arm | school)), fit_both, label = "arm")[[1]],
  female = fit_both(score ~ female + gcsescore + (1 + female | school), "female")
)
writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, pretty = TRUE, dataframe = "rows"), "tests/fixtures/chem97/lme4.json")
