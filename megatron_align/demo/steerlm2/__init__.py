"""``megatron-align demo steerlm2``: SteerLM 2.0 rounds from the SteerLM demo's models (built-in world)."""
