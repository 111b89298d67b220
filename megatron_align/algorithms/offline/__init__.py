"""Offline alignment (seed 003): the random sampler and the reward labeler, one model each; Rejection
Sampling, ReST and Decision Transformer are the labeler's processors (``scoring/filters.py``), SFT on the
result is the SFT stage."""
