"""The math of every stage, written once: pure tensor functions (tensors in; loss sums, counts, metrics out).

- ``reduce``: the one reduction convention of every loss (a sum and the global count it is divided by) and the
  ``(loss_sum, count, reduced)`` triple megatron's schedules take;
- ``nll``: causal-LM negative log-likelihood, plain (per token) and per-sequence weighted;
- ``reward``: the reward model's masked multi-attribute regression and the Bradley-Terry pair family;
- ``steerlm2``: SteerLM 2.0's self-normalized importance weights w' and baselines b';
- ``preference``: the DPO family (dpo, ipo, rpo_sq, rpo_bwd_kl, rpo_fwd_kl, scale) per pair and EXO
  (exo-rw, dpo-rw, exo-pref, dpo-pref) per ragged group of completions.

Nothing here reads megatron's parallel state or a config object: the training loops pass tensors and options.
"""
