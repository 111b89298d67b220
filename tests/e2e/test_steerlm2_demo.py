"""``megatron-align demo steerlm2 size=tiny``: with no SteerLM demo run it runs that demo first (tiny), then
one SteerLM 2.0 round (builder + training) and the steering sweep before and after; the round's training moves
the policy toward w' (distance falls) and the table, results and plot are written."""

import json

import pytest

from tests.e2e.test_cli_demo import _cli


@pytest.mark.slow
def test_tiny_steerlm2_demo_runs_from_scratch(tmp_path):
    proc = _cli("demo", "steerlm2", "size=tiny", f"steerlm_run_dir={tmp_path / 'steerlm'}",
                f"exp_manager.explicit_log_dir={tmp_path / 's2'}", timeout=1500)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert (tmp_path / "steerlm" / "results.json").is_file()  # the SteerLM demo ran first
    results = json.loads((tmp_path / "s2" / "results.json").read_text())
    assert sorted(results["evaluation"]) == ["round 1", "start"]
    assert set(results["evaluation"]["start"]) == {"verbosity", "helpfulness", "toxicity", "overall"}
    assert "| attribute | MAE start | MAE round 1 |" in proc.stdout
    rows = [json.loads(x) for x in (tmp_path / "s2" / "rounds" / "round_1" / "train" / "metrics.jsonl")
            .read_text().splitlines()]
    # 8 steps of 4 of the 16 prompts: two passes over the same prompts; the second is closer to w'
    first, second = (sum(r["distance"] for r in rows[i:i + 4]) / 4 for i in (0, 4))
    assert len(rows) == 8 and second < first, [r["distance"] for r in rows]
    # the data were sampled from the start policy: log Q_theta = log Q' at step 0, up to bf16 rounding of
    # differently shaped batches (precision=auto runs bf16 on AVX-512 BF16 cores)
    assert abs(rows[0]["logq_drift"]) < 0.05
    assert (tmp_path / "s2" / "mae.png").stat().st_size > 5_000


def test_bad_steerlm2_demo_config_is_one_line():
    proc = _cli("demo", "steerlm2", "rounds=0")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("config error: rounds=0 must be at least 1"), lines
