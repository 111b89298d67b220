"""SteerLM beyond data preparation: steering at inference and bootstrapping (the SteerLM paper's step 4).

* ``steer``: attribute values (``quality:4,humor:0,...``) -> the seed's generation prompt with its label line
  -> a response, from a running ``PUT /generate`` server or a local checkpoint (``megatron-align steer``).
* ``generate``: the two generation routes (HTTP client of the generation server; in-process
  ``MegatronGenerationBackend`` over a checkpoint) and how a continuation is cut from the returned text.
* ``scoring``: an in-process scorer over a regression reward model checkpoint (texts -> ``[B, 9]``).
* ``bootstrap``: sample responses at maximum quality, annotate them with the reward model, fine-tune on them;
  ``examples/steerlm/`` runs each step or the loop over rounds.

Modules are imported by their full names (nothing is re-exported here: torch is only imported when needed).
"""
