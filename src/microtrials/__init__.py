"""microtrials: pool school micro-trials and publish a local evidence table."""

__version__ = "0.1.0"
