"""Shared by the server tests: tiny checkpoints (a policy and a 3-attribute reward model with a sentencepiece
tokenizer that knows the SteerLM markers), starting a server subprocess and waiting for it, and the seed's
``get_answer`` client."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers import ROOT, _clean_env, tiny_llama

GEN_SCRIPT = ROOT / "examples" / "nlp" / "language_modeling" / "megatron_gpt_eval.py"
RM_SCRIPT = ROOT / "examples" / "nlp" / "gpt" / "serve_reward_model.py"
CONTEXT = 256

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
TEXTS = [SYSTEM, "System", "User", "Assistant", "Write a poem on NVIDIA in the style of Shakespeare",
         "quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4,correctness:4,coherence:4,complexity:4",
         "In days of yore, in tech's great hall, A company arose, NVIDIA its call.",
         "With graphics cards, it did astound, And gaming world with awe did abound.",
         "Q: How are you? Q: How big is the universe? The answer is forty two."] * 3


def make_checkpoints(root: Path) -> dict:
    """A policy and a reward model checkpoint under ``root`` (needs the 1-rank megatron groups)."""
    import torch

    with torch.random.fork_rng():  # the same weights whatever ran before in this process
        torch.manual_seed(20261122)
        return _make_checkpoints(root)


def _make_checkpoints(root: Path) -> dict:
    from megatron_align.models.checkpoint import save_checkpoint
    from megatron_align.models.gpt import build_gpt_model
    from megatron_align.models.reward import build_reward_model
    from megatron_align.tokenizers import load_tokenizer, train_sentencepiece

    tok_file = train_sentencepiece(TEXTS, str(root / "tok"), vocab_size=512)
    tok = load_tokenizer("sentencepiece", tok_file)
    common = dict(vocab_size=tok.vocab_size, make_vocab_size_divisible_by=64, encoder_seq_length=CONTEXT,
                  max_position_embeddings=CONTEXT, init_method_std=0.2)
    policy_cfg = tiny_llama(**common)
    policy = build_gpt_model(policy_cfg, vocab_size=tok.vocab_size)
    policy_dir = save_checkpoint(root / "policy", policy, policy_cfg, tokenizer_dir=root / "tok")
    rm_cfg = tiny_llama(num_attributes=3, **common)
    rm = build_reward_model(rm_cfg, vocab_size=tok.vocab_size)
    rm_dir = save_checkpoint(root / "rm", rm, rm_cfg, tokenizer_dir=root / "tok")
    return {"policy": policy_dir, "rm": rm_dir, "policy_cfg": policy_cfg, "rm_cfg": rm_cfg, "tokenizer": tok}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server started as a subprocess in its own session; output goes to a temporary file."""

    def __init__(self, cmd: list[str], env_extra: dict | None = None):
        env = _clean_env()
        env.update(env_extra or {})
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.pids: list[int] = []
        """PID of each rank, from the ready line."""

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def wait_ready(self, timeout: float = 240.0) -> None:
        """Until the rank-0 process prints its ready line (with its PID)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"server ready: \S+ \(PID \d+; ranks' PIDs \[([\d, ]+)\]\)", self.output())
            if m:
                self.pids = [int(p) for p in m.group(1).split(",")]
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()[-5000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"server not ready:\n{self.output()[-5000:]}")

    def terminate(self, rank: int = 0, timeout: float = 60.0) -> int:
        """SIGTERM to one rank's process (rank 0 serves HTTP); the exit status of the whole job."""
        os.kill(self.pids[rank], signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        # torchrun's workers run in sessions of their own: kill each rank as well as the launcher's group
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        os.unlink(self.log.name)


def python_cmd(script: Path, *args: str) -> list[str]:
    return [sys.executable, str(script), *args]


# The seed's helper (001, "Create Python helper functions"), unchanged but for the line breaks.
def get_answer(question, max_tokens, values, eval_port=1427):
    import requests

    prompt = (
        "<extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.\n"
        "<extra_id_1>User\n{question}\n<extra_id_1>Assistant\n<extra_id_2>{values}\n"
    )
    prompts = [prompt.format(question=question, values=values)]
    data = {
        "sentences": prompts,
        "tokens_to_generate": max_tokens,
        "top_k": 1,
        "greedy": True,
        "end_strings": ["<extra_id_1>"],
    }
    url = f"http://localhost:{eval_port}/generate"
    response = requests.put(url, json=data)
    json_response = response.json()
    response_sentence = json_response["sentences"][0][len(prompt):]
    return response_sentence
