"""``megatron-align demo [stage]``: the built-in world (``world``: rule-measurable chats that stand in for
human
annotations) and one end-to-end pipeline per stage family (``steerlm``, the default)."""
