"""The SteerLM demo's steering evaluation (``demo/steerlm/evaluate.py``) and its config presets, without a
model.

The references are independent of the code under test: a "perfect" generator answers each steering prompt
with ``build_response`` (the data generator, which hits requested targets by construction), so every swept
attribute must come out with Spearman 1 and per-level means equal to the levels; a constant generator must
give no correlation (NaN).
"""

import math
import random
import re

import pytest

from megatron_align.config import ConfigError, load_config
from megatron_align.data.steerlm.attributes import STEERLM_ATTRIBUTES, decode_label
from megatron_align.demo.steerlm.config import SIZES, DemoConfig, with_size_preset
from megatron_align.demo.steerlm.evaluate import (
    LEVELS,
    evaluate_steering,
    plot_steering,
    steering_requests,
    steering_table,
)
from megatron_align.demo.world import make_question
from megatron_align.demo.world.generate import build_response
from megatron_align.generation.steering import DEFAULT_VALUES

_LABEL = re.compile(r"<extra_id_2>(.*)\n$")
_USER = re.compile(r"<extra_id_1>User\n(.*)\n<extra_id_1>Assistant\n")


def _questions(n):
    rng = random.Random("eval-test")
    return [make_question(rng) for _ in range(n)]


def _perfect(questions):
    """Answers built to hit the label line's values exactly (the data generator, not the model)."""
    by_text = {q.text: q for q in questions}
    rng = random.Random(0)

    def generate(prompts):
        out = []
        for p in prompts:
            targets = decode_label(_LABEL.search(p).group(1))
            out.append(build_response(by_text[_USER.search(p).group(1)], targets, rng))
        return out

    return generate


def test_requests_turn_one_attribute_and_hold_the_others_at_the_defaults():
    reqs = steering_requests(["What is 2 apples plus 3 apples?"], ["humor", "verbosity"])
    assert [(r.attribute, r.value) for r in reqs] == [(a, v) for a in ("humor", "verbosity") for v in LEVELS]
    for r in reqs:
        values = decode_label(_LABEL.search(r.prompt).group(1))
        assert list(values) == list(STEERLM_ATTRIBUTES)
        assert values == dict(DEFAULT_VALUES, **{r.attribute: r.value})


def test_a_generator_that_obeys_scores_spearman_one_everywhere():
    questions = _questions(4)
    calls = []
    results, samples = evaluate_steering(lambda ps: calls.append(len(ps)) or _perfect(questions)(ps),
                                         [q.text for q in questions], batch_size=7)
    assert sum(calls) == len(STEERLM_ATTRIBUTES) * 5 * 4 and max(calls) == 7
    assert len(samples) == sum(calls)
    for name, res in results.items():
        assert res.spearman == pytest.approx(1.0), name
        assert res.mean_by_level() == pytest.approx(list(LEVELS)), name


def test_a_generator_that_ignores_the_label_scores_no_correlation(tmp_path):
    questions = [q.text for q in _questions(3)]
    results, _ = evaluate_steering(lambda ps: ["Sure, 2 plus 3 is 5 apples."] * len(ps), questions,
                                   attributes=["verbosity", "helpfulness"])
    assert all(math.isnan(r.spearman) for r in results.values())
    table = steering_table(results, {"verbosity": 0.25}, {"verbosity": 1.2})
    rows = table.splitlines()
    assert rows[0].startswith("| attribute | Spearman |") and len(rows) == 4
    assert rows[2] == "| verbosity | n/a | 0.0 / 0.0 / 0.0 / 0.0 / 0.0 | 0.25 | 1.20 |"
    assert rows[3].startswith("| helpfulness | n/a | 3.0 / 3.0 / 3.0 / 3.0 / 3.0 | n/a |")
    path = plot_steering(results, tmp_path / "s.png", {"verbosity": 0.25})
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_size_preset_goes_before_the_command_line():
    assert with_size_preset(["model.hidden_size=64"]) == ["model.hidden_size=64"]
    args = with_size_preset(["size=tiny", "ac_sft.max_steps=7"])
    assert args[:len(SIZES["tiny"])] == list(SIZES["tiny"])
    cfg = load_config(DemoConfig, None, args)
    assert cfg.size == "tiny" and cfg.ac_sft.max_steps == 7 and cfg.model.num_layers == 2
    with pytest.raises(ConfigError, match="size='big' is not one of full|tiny"):
        load_config(DemoConfig, None, with_size_preset(["size=big"]))
