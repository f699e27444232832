"""The statistics: REML fits, effect sizes, pooling, evidence strength, trials and planning."""
