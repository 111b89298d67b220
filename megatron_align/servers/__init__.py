"""HTTP servers: NeMo's ``PUT /generate`` text-generation server and NeMo-Aligner's reward-model server.

``generation_server`` (``examples/nlp/language_modeling/megatron_gpt_eval.py``) and ``reward_server``
(``examples/nlp/gpt/serve_reward_model.py``) share the plumbing: ``config`` (schemas), ``control`` (rank 0
drives and stops the other ranks), ``batching`` + ``loop`` (request merging, data-parallel replicas), ``http``
(FastAPI errors, size limit, uvicorn thread), ``scoring`` (forward-only log-probs and rewards), ``setup``.
"""
