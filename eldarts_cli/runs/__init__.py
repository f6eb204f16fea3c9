"""Run folders: creation rules, typed run files, checkpoints, figures and the paper's tables."""
