"""``MegatronGenerationBackend``: batched generation on the live megatron ``GPTModel`` (any TP x PP layout).

How one ``generate`` call runs (per batch of at most ``max_batch_size`` prompts):
1. Prompts (strings through the tokenizer, or id lists) are placed in a ``[B, T]`` buffer
   (``layout.py``: left-padded with a pad mask when the core attention honours masks, otherwise NeMo's
   "context first" right padding; ``padding=`` picks, ``"auto"`` decides from the layer spec).
2. The KV cache is megatron's own: a ``StaticInferenceContext`` passed as ``GPTModel.forward(...,
   inference_context=...)``; attention writes each step's keys/values into buffers of
   ``[max_sequence_length, max_batch_size, groups/tp, head_dim]`` per layer, allocated once (first call)
   and reused, so memory is bounded by the two limits. ``use_kv_cache=False`` recomputes the whole sequence
   every step instead (the reference the cache is tested against).
3. Pipeline stages pass hidden states forward with p2p send/recv; the last stage's TP rank 0 picks the
   tokens (``sampling.py``) and broadcasts tokens, log-probs and stop flags to every rank (``stages.py``).
4. A row stops at eos or when an end string completes (``stopping.py``), never before
   ``min_tokens_to_generate`` tokens; generation ends when every row has stopped or reached
   ``tokens_to_generate``.

Log-probs are ``log_softmax`` of the raw logits (padded vocabulary, before temperature and the other
processors: NeMo's convention, and what the training-side ``token_logprobs`` computes) of each generated
token.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Optional

import torch

from megatron_align.distributed import cpu_compat
from megatron_align.generation.interface import GenerationBackend, GenerationOutput, Prompts, SamplingParams
from megatron_align.generation.layout import BatchLayout, attention_mask, make_layout
from megatron_align.generation.sampling import ChoiceRules, choose_tokens, chosen_logprobs, make_generator
from megatron_align.generation.stages import StageComm
from megatron_align.generation.stopping import StopStrings

logger = logging.getLogger(__name__)

PADDINGS = ("auto", "left", "right")
ENGINES = ("auto", "lean", "megatron")


def unwrap_gpt(model):
    """The ``GPTModel`` inside DDP / Float16Module-style wrappers (anything with ``.module``)."""
    while not hasattr(model, "decoder") and hasattr(model, "module"):
        model = model.module
    if not hasattr(model, "decoder"):
        raise TypeError(f"{type(model).__name__}: not a megatron GPTModel (no .decoder)")
    return model


def masks_honoured(model) -> bool:
    """True when every local layer's core attention applies explicit masks (megatron's local
    ``DotProductAttention`` and subclasses such as ours); Transformer Engine's does not under causal types."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    layers = getattr(model.decoder, "layers", [])
    return all(isinstance(layer.self_attention.core_attention, DotProductAttention) for layer in layers)


class MegatronGenerationBackend(GenerationBackend):
    """Generation on a megatron ``GPTModel`` stage; collective over the model's TP and PP ranks.

    model:               this rank's GPTModel (possibly wrapped); its weights are read live (in-place
                         optimizer updates need no ``refit``)
    tokenizer:           an ``AlignTokenizer`` (needed for string prompts, text end strings and ``texts``)
    tp_group, pp_group:  process groups; both None: megatron's global parallel state
    max_batch_size:      rows per forward; larger requests run in consecutive batches of this size
    max_sequence_length: prompt + generated tokens per row (KV cache length); default the model's
    vocab_size:          real vocabulary (ids at or above it are never chosen); default the tokenizer's
    eos_id, pad_id:      default the tokenizer's (pad falls back to eos, then 0)
    use_kv_cache:        False recomputes the full sequence each step through ``GPTModel.forward``
    padding:             "left" (pad mask), "right" (context first) or "auto"
    engine:              with the KV cache: "lean" (``lean_forward.LeanStage``, its own cache), "megatron"
                         (``GPTModel.forward`` + megatron's ``StaticInferenceContext``) or "auto" (lean when
                         it supports the model, else megatron)
    """

    name = "megatron"
    logprob_kind = "raw"  # log_softmax of the raw logits (module docstring)

    def __init__(self, model, tokenizer=None, *, tp_group=None, pp_group=None, max_batch_size: int = 8,
                 max_sequence_length: Optional[int] = None, vocab_size: Optional[int] = None,
                 eos_id: Optional[int] = None, pad_id: Optional[int] = None, use_kv_cache: bool = True,
                 padding: str = "auto", engine: str = "auto"):
        self.model = unwrap_gpt(model)
        self.tokenizer = tokenizer
        if tp_group is None and pp_group is None:
            self.comm = StageComm.from_parallel_state()
        else:
            self.comm = StageComm(tp_group, pp_group)
        config = self.model.config
        if config.sequence_parallel and self.comm.tp_size > 1:
            raise ValueError("generation does not support sequence_parallel=True (a one-token decode step "
                             "cannot be split over TP ranks); build the generation model without it")
        if max_batch_size < 1:
            raise ValueError("max_batch_size: must be >= 1")
        self.max_batch_size = int(max_batch_size)
        self.max_sequence_length = int(max_sequence_length or self.model.max_sequence_length)
        model_limit = self.model.max_sequence_length
        learned = self.model.position_embedding_type == "learned_absolute"
        if learned and self.max_sequence_length > model_limit:
            raise ValueError(f"max_sequence_length={self.max_sequence_length} exceeds the model's "
                             f"{model_limit} learned positions")
        self.vocab_size = vocab_size if vocab_size is not None else getattr(tokenizer, "vocab_size", None)
        self.eos_id = eos_id if eos_id is not None else getattr(tokenizer, "eos_id", None)
        if pad_id is None:
            pad_id = getattr(tokenizer, "pad_id", None)
        self.pad_id = pad_id if pad_id is not None else (self.eos_id if self.eos_id is not None else 0)
        self.use_kv_cache = bool(use_kv_cache)
        if padding not in PADDINGS:
            raise ValueError(f"padding={padding!r}: use one of {PADDINGS}")
        self.left = masks_honoured(self.model) if padding == "auto" else padding == "left"
        self.hidden_size = config.hidden_size
        self.hidden_dtype = config.pipeline_dtype or config.params_dtype
        self.device = next(self.model.parameters()).device
        self._context = None
        self.engine = engine
        self.lean = self._lean_stage(engine) if self.use_kv_cache else None

    def _lean_stage(self, engine: str):
        if engine not in ENGINES:
            raise ValueError(f"engine={engine!r}: use one of {ENGINES}")
        if engine == "megatron":
            return None
        from megatron_align.generation.lean_forward import LeanStage, unsupported

        reason = unsupported(self.model, self.comm.tp_size)
        if not self.comm.all_true(reason is None, self.device):
            reason = reason or "another stage or rank cannot use it"
            if engine == "lean":
                raise ValueError(f"engine='lean': {reason}")
            logger.info("generation uses megatron's forward + StaticInferenceContext (%s)", reason)
            return None
        return LeanStage(self.model, self.comm.tp_group, self.comm.tp_size, self.max_batch_size,
                         self.max_sequence_length)

    # ------------------------------------------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------------------------------------------
    def generate(self, prompts: Prompts, params: SamplingParams) -> GenerationOutput:
        """Generate for every prompt; every rank of the model must call this with the same arguments."""
        params.validate()
        ids = self.encode(prompts, params)
        longest = max(len(p) for p in ids)
        need = longest + params.tokens_to_generate
        if need > self.max_sequence_length:
            raise ValueError(
                f"request too long: longest prompt {longest} tokens + tokens_to_generate "
                f"{params.tokens_to_generate} = {need} > max_sequence_length {self.max_sequence_length}; "
                "shorten the prompt, lower tokens_to_generate or build the backend with a larger "
                "max_sequence_length")
        stops = StopStrings(params.end_strings, self.tokenizer)
        generator = make_generator(params.random_seed, self.device) if self.comm.chooser else None
        rows = []
        was_training = self.model.training
        self.model.eval()
        try:
            with self._mode():
                for lo in range(0, len(ids), self.max_batch_size):
                    rows.extend(self._generate_batch(ids[lo:lo + self.max_batch_size], params, stops,
                                                     generator))
        finally:
            self.model.train(was_training)
        return self._output(rows, params)

    def _mode(self):
        """The lean engine's tensors are all its own: inference mode (less dispatch work per call) and the
        CPU compatibility layer paused (it never names CUDA). The megatron forward keeps no_grad, because
        megatron caches tensors it creates in a forward (rotary tables, the attention score buffer) that
        training would later reuse."""
        if self.lean is None:
            return torch.no_grad()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(cpu_compat.paused())
        return stack

    def encode(self, prompts: Prompts, params: SamplingParams) -> list[list[int]]:
        """Prompt token ids: strings through the tokenizer (``add_BOS`` honoured), id lists as given."""
        if isinstance(prompts, (str, bytes)) or len(prompts) == 0:
            raise ValueError("prompts: give a non-empty list of strings or of token-id lists")
        if all(isinstance(p, str) for p in prompts):
            if self.tokenizer is None:
                raise ValueError("string prompts need a tokenizer attached to the backend")
            ids = self.tokenizer.texts_to_ids(prompts, add_bos=params.add_BOS)
        else:
            ids = [[int(t) for t in p] for p in prompts]
        empty = [i for i, p in enumerate(ids) if not p]
        if empty:
            raise ValueError(f"prompts {empty[:5]}: empty after tokenization")
        return ids

    def refit(self, model=None) -> None:
        """The backend reads the live weights; after the model's parameters were *replaced* (not updated in
        place), pass the model again so the lean engine picks up the new tensors."""
        if model is not None:
            self.model = unwrap_gpt(model)
        self.close()
        self.lean = self._lean_stage(self.engine) if self.use_kv_cache else None

    def close(self) -> None:
        """Free the KV cache buffers."""
        self._context = None
        if self.lean is not None:
            self.lean.release()

    # ------------------------------------------------------------------------------------------------------
    # one batch
    # ------------------------------------------------------------------------------------------------------
    def _inference_context(self):
        from megatron.core.inference.contexts import StaticInferenceContext

        if self._context is None:
            self._context = StaticInferenceContext(self.max_batch_size, self.max_sequence_length)
        self._context.reset()
        return self._context

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, stops: StopStrings,
                        generator) -> list[tuple]:
        lay = make_layout(prompts, params.tokens_to_generate, self.pad_id, self.left, self.device)
        b, total, dev = len(prompts), lay.total, self.device
        n_new = params.tokens_to_generate
        rules = ChoiceRules(params, self.eos_id, self.vocab_size)
        if stops:
            stops.set_prompts(prompts)
        generated = torch.zeros(b, dtype=torch.long, device=dev)  # [B]
        done = torch.zeros(b, dtype=torch.bool, device=dev)  # [B]
        is_end = torch.zeros(b, dtype=torch.bool, device=dev)  # [B]
        logprobs = torch.zeros(b, total, dtype=torch.float32, device=dev)  # [B, T] lp of token at t
        seen = None  # [B, V] ids present so far, for the repetition penalty (chooser only)
        ctx = self._inference_context() if self.use_kv_cache and self.lean is None else None
        q_start, q_end = 0, lay.prefill_end
        while q_end < total and n_new > 0:
            logits = self._forward(lay, q_start, q_end, ctx)  # [B, V] predicting position q_end
            packed = torch.empty(4 * b, dtype=torch.float64, device=dev)  # [tok | lp | ended | finished]
            if self.comm.chooser:
                if seen is None and params.repetition_penalty != 1.0:
                    seen = self._seen(lay, logits.size(-1))
                packed = self._choose(lay, q_end, logits, rules, generated, done, seen, stops, generator)
            if self.comm.shares:
                self.comm.share_choice(packed)
            tok, lp, ended, finished = packed.view(4, b)
            tok = tok.long()
            active = (q_end >= lay.start) & ~done  # [B] rows generating at this position
            lay.tokens[:, q_end] = torch.where(active, tok, lay.tokens[:, q_end])
            logprobs[:, q_end] = torch.where(active, lp.float(), 0.0)
            if seen is not None:
                seen[active, tok[active]] = True
            generated += active.long()
            is_end |= ended.bool()
            done |= finished.bool()
            if bool(done.all()):
                break
            q_start, q_end = q_end, q_end + 1
        rows = []
        for i in range(b):
            lo, hi = int(lay.offset[i]), int(lay.start[i] + generated[i])
            rows.append((lay.tokens[i, lo:hi].cpu(), logprobs[i, lo + 1:hi].cpu(), bool(is_end[i]),
                         int(lay.prompt_lengths[i])))
        return rows

    def _forward(self, lay: BatchLayout, q_start: int, q_end: int, ctx) -> Optional[torch.Tensor]:
        """Run this stage on positions ``[q_start, q_end)`` (cache) or ``[0, q_end)`` (no cache); on the
        last stage return the logits ``[B, V]`` that predict position ``q_end``."""
        if self.lean is not None:
            return self._lean_forward(lay, q_start, q_end)
        if ctx is None:
            q_start = 0
        else:
            ctx.sequence_len_offset = q_start
            if q_start > 0:
                ctx.enable_decode_mode()
        ids = lay.tokens[:, q_start:q_end]  # [B, s]
        pos = lay.position_ids[:, q_start:q_end]  # [B, s]
        mask = attention_mask(lay, q_start, q_end)  # [B, 1, s, q_end] or None
        if not self.comm.first:
            shape = (q_end - q_start, ids.size(0), self.hidden_size)
            hidden = self.comm.recv_hidden(shape, self.hidden_dtype, self.device)  # [s, B, H]
            self.model.set_input_tensor(hidden)
        kwargs = {"runtime_gather_output": True}
        if ctx is not None:
            kwargs["inference_context"] = ctx
        out = self.model(ids, pos, mask, **kwargs)
        if not self.comm.last:
            self.comm.send_hidden(out)  # [s, B, H]
            return None
        return out[:, -1, :]  # [B, V]

    def _lean_forward(self, lay: BatchLayout, q_start: int, q_end: int) -> Optional[torch.Tensor]:
        ids = lay.tokens[:, q_start:q_end]  # [B, s]
        hidden = None
        if not self.comm.first:
            hidden = self.comm.recv_hidden((ids.size(0), q_end - q_start, self.hidden_size),
                                           self.lean.dtype, self.device)  # [B, s, H]
        mask = attention_mask(lay, q_start, q_end)  # [B, 1, s, q_end] True = blocked, or None
        out = self.lean.forward(ids, lay.position_ids[:, q_start:q_end], q_start, q_end, hidden,
                                None if mask is None else ~mask)
        if not self.comm.last:
            self.comm.send_hidden(out)  # [B, s, H]
            return None
        return out  # [B, V]

    def _seen(self, lay: BatchLayout, vocab: int) -> torch.Tensor:
        """``[B, V]`` bool: the ids of each row's prompt."""
        seen = torch.zeros(lay.tokens.size(0), vocab, dtype=torch.bool, device=self.device)
        for i in range(lay.tokens.size(0)):
            lo = int(lay.offset[i])
            seen[i, lay.tokens[i, lo:lo + int(lay.prompt_lengths[i])]] = True
        return seen

    def _choose(self, lay, q_end, logits, rules, generated, done, seen, stops, generator) -> torch.Tensor:
        """Chooser rank: next tokens, their log-probs and stop flags, packed ``[4 * B]`` float64."""
        params = rules.params
        tok = choose_tokens(logits, rules, generated, seen, generator)  # [B]
        if params.compute_logprob:
            lp = chosen_logprobs(logits, tok)  # [B]
        else:
            lp = torch.zeros(tok.shape, dtype=torch.float32, device=tok.device)
        active = (q_end >= lay.start) & ~done  # [B]
        count = generated + active.long()  # [B] tokens generated including this one
        ended = active & (tok == self.eos_id) if self.eos_id is not None else torch.zeros_like(active)
        if stops:
            for i in torch.nonzero(active & ~ended & (count >= params.min_tokens_to_generate)).flatten():
                i = int(i)
                ids = lay.tokens[i, int(lay.offset[i]):q_end].tolist() + [int(tok[i])]
                if stops.completed(i, ids):
                    ended[i] = True
        finished = ended | (active & (count >= params.tokens_to_generate))
        return torch.cat([tok.double(), lp.double(), ended.double(), finished.double()])  # [4B]

    # ------------------------------------------------------------------------------------------------------
    # output
    # ------------------------------------------------------------------------------------------------------
    def _output(self, rows: Sequence[tuple], params: SamplingParams) -> GenerationOutput:
        b = len(rows)
        width = max(len(r[0]) for r in rows)
        tokens = torch.full((b, width), self.pad_id, dtype=torch.long)  # [B, T]
        logprobs = torch.zeros(b, max(width - 1, 0), dtype=torch.float32)  # [B, T-1]
        lengths = torch.tensor([len(r[0]) for r in rows], dtype=torch.long)
        for i, (tok, lp, _, _) in enumerate(rows):
            tokens[i, :len(tok)] = tok
            logprobs[i, :len(lp)] = lp
        texts = None
        if self.tokenizer is not None:
            texts = [self.tokenizer.ids_to_text(tokens[i, :int(lengths[i])].tolist()) for i in range(b)]
        return GenerationOutput(
            tokens=tokens,
            prompt_lengths=torch.tensor([r[3] for r in rows], dtype=torch.long),
            lengths=lengths,
            logprobs=logprobs if params.compute_logprob else None,
            is_end=torch.tensor([r[2] for r in rows], dtype=torch.bool),
            texts=texts,
        )

