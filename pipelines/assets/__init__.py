"""The assets: loading, trial results, publishing."""
