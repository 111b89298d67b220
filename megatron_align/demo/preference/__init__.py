"""``megatron-align demo dpo`` / ``demo exo``: preference training on the built-in world."""
