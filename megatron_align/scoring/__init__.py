"""Everything that turns (prompt, response) into numbers, behind one ``Scorer`` signature (``base``).

- ``reward_model``: a reward-model checkpoint scored in this process (``RewardScorer``);
- ``remote``: the reward server's client (``RewardClient``, NeMo-Aligner's ``PUT /infer``);
- ``forward``: the forward-only passes both servers and the in-process scorer run (rewards at the last real
  token, per-token log-probs);
- ``standardize``: ``(r - mean) / std`` per attribute, written once.

SteerLM's attribute annotation (``data.steerlm.annotate``) takes any scorer's ``score``.
"""
