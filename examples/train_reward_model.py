"""Reward-model training as NeMo-Aligner users run it: SteerLM's regression reward model, HelpSteer2 and
HelpSteer2-Preference (``model.regression.loss_func=scaled_bt``), and binary Bradley-Terry reward models.

    python examples/train_reward_model.py [key=value ...]
    torchrun --nproc_per_node 8 examples/train_reward_model.py trainer.devices=8 \
        ++model.tensor_model_parallel_size=4 model.reward_model_type=regression ...

Defaults: conf/training_rm.yaml (every key documented there); the command line overrides them with the seed
documents' syntax (``key=value``, ``++key=value``, ``~key``). Bad keys, types or layouts: one line, exit 2.
"""

import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf" / "training_rm.yaml"


def main(argv: list[str]) -> int:
    from megatron_align.algorithms.reward_model import run_reward_model
    from megatron_align.config import check_launch_matches, load_config, run_cli
    from megatron_align.config.stages.reward_model import RMConfig
    from megatron_align.distributed.launch import detect_launch_env, shutdown

    def inner() -> int:
        cfg = load_config(RMConfig, CONF, argv)
        check_launch_matches(cfg, detect_launch_env().world_size)
        from megatron_align.log import setup_logging

        setup_logging()
        summary = run_reward_model(cfg)
        shutdown()
        losses = list(summary["losses"].values())
        if losses and detect_launch_env().rank == 0:
            print(f"rm: {summary['steps']} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
                  f"run directory {summary['run_dir']}")
        return 0

    return run_cli(inner)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
