"""Shared training mechanics: model/optimizer setup, per-token-normalized forward/backward, learning-rate
schedule, global-batch sampling, one guarded optimizer step, metrics, progress and checkpoint/resume.
Algorithms (``megatron_align/algorithms``) write their own loops from these pieces."""
