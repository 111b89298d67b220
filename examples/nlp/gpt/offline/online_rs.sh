#!/usr/bin/env bash
# Online Rejection Sampling (seed 003's iterative script): per iteration, sample data.n answers for the next
# ROLLOUT_BATCH_SIZE prompts with the current policy, keep the best of each prompt's answers (processor=rs;
# processor=rest with threshold=... for Online ReST), fine-tune on them, and continue from the result.
# Resumable: with ITER_LOG_PATH set, a rerun starts at the first unfinished iteration.
#
# The paths and sizes are the seed's; set any of the variables below in the environment to change them, e.g.
#   PROMPTS_PATH=data/prompts.jsonl POLICY_MODEL_PATH=ckpts/sft REWARD_MODEL_PATH=ckpts/rm \
#   RESULT_PATH=results/online_rs ITER_LOG_PATH=results/online_rs/iter.log DEVICES=1 \
#   bash examples/nlp/gpt/offline/online_rs.sh
set -euo pipefail
cd "$(dirname "$0")/../../../.."  # the repository root: the seed's relative script paths

PYTHON=${PYTHON:-python}
TRAINING_ITERS=${TRAINING_ITERS:-20}
ROLLOUT_BATCH_SIZE=${ROLLOUT_BATCH_SIZE:-2048}

PROMPTS_PATH=${PROMPTS_PATH:-/path/to/your/prompts_dataset.jsonl}
GENERATE_SAMPLES_PATH=${GENERATE_SAMPLES_PATH:-/path/to/your/generated_samples.jsonl}
LABELED_SAMPLES_PATH=${LABELED_SAMPLES_PATH:-/path/to/your/filtered_samples.jsonl}

POLICY_MODEL_PATH=${POLICY_MODEL_PATH:-/path/to/your/sft_model.nemo}
REWARD_MODEL_PATH=${REWARD_MODEL_PATH:-path/to/your/reward_model.nemo}

RESULT_PATH=${RESULT_PATH:-/path/to/your/sft_results}
MODEL_OUTPUT_PATH=$RESULT_PATH/checkpoints/megatron_gpt_sft.nemo # default .nemo save path of the SFT trainer
ITER_LOG_PATH=${ITER_LOG_PATH:-null} # iters checkpoints, such as your/path/iter.log

# sizes (the seed's values)
NUM_NODES=${NUM_NODES:-1}
DEVICES=${DEVICES:-8}
PRECISION=${PRECISION:-bf16-mixed}
TOKENS_TO_GENERATE=${TOKENS_TO_GENERATE:-2048}
SAMPLE_MICRO_BATCH_SIZE=${SAMPLE_MICRO_BATCH_SIZE:-32}
SAMPLE_MAX_SEQ_LENGTH=${SAMPLE_MAX_SEQ_LENGTH:-2048}
NUM_SAMPLES=${NUM_SAMPLES:-16}
LABEL_MICRO_BATCH_SIZE=${LABEL_MICRO_BATCH_SIZE:-8}
MAX_SEQ_LENGTH=${MAX_SEQ_LENGTH:-4096}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-128}
PROCESSOR=${PROCESSOR:-rs}

iter=0
if [ -f "$ITER_LOG_PATH" ]; then
  iter=$(cat "$ITER_LOG_PATH") # read iters
fi

while ((iter < TRAINING_ITERS)); do
  # Use latest model if past first iteration
  if ((iter > 0)); then
    POLICY_MODEL_PATH=$MODEL_OUTPUT_PATH
  fi

  # Generate Nx samples; sample_split_size / sample_split_iter take the prompts
  # [sample_split_iter * sample_split_size, (sample_split_iter + 1) * sample_split_size)
  $PYTHON examples/nlp/gpt/offline/launch_random_sampler.py \
    gpt_model_file="$POLICY_MODEL_PATH" \
    inference.greedy=False \
    inference.add_BOS=False \
    inference.tokens_to_generate="$TOKENS_TO_GENERATE" \
    inference.temperature=0.9 \
    trainer.num_nodes="$NUM_NODES" \
    trainer.devices="$DEVICES" \
    trainer.precision="$PRECISION" \
    megatron_amp_O2=True \
    data.micro_batch_size="$SAMPLE_MICRO_BATCH_SIZE" \
    data.max_seq_length="$SAMPLE_MAX_SEQ_LENGTH" \
    data.n="$NUM_SAMPLES" \
    data.concat_sampling_probabilities=[1] \
    data.file_names=["$PROMPTS_PATH"] \
    data.hf_dataset=True \
    data.sample_split_size="$ROLLOUT_BATCH_SIZE" \
    data.sample_split_iter="$iter" \
    output_file="$GENERATE_SAMPLES_PATH" \
    export_reward=False \
    checkpoint_interval=1

  # Label the samples with the reward model and post-process them (rs: Rejection Sampling; rest: ReST)
  $PYTHON examples/nlp/gpt/offline/launch_reward_labeler.py \
    gpt_model_file="$REWARD_MODEL_PATH" \
    trainer.num_nodes="$NUM_NODES" \
    trainer.devices="$DEVICES" \
    trainer.precision="$PRECISION" \
    megatron_amp_O2=True \
    data.micro_batch_size="$LABEL_MICRO_BATCH_SIZE" \
    data.max_seq_length="$MAX_SEQ_LENGTH" \
    data.concat_sampling_probabilities=[1] \
    data.file_names=["$GENERATE_SAMPLES_PATH"] \
    data.hf_dataset=True \
    processor="$PROCESSOR" \
    output_file="$LABELED_SAMPLES_PATH" \
    checkpoint_interval=4

  # SFT training
  $PYTHON examples/nlp/gpt/train_gpt_sft.py \
    trainer.num_nodes="$NUM_NODES" \
    trainer.devices="$DEVICES" \
    trainer.precision="$PRECISION" \
    ++trainer.sft.max_steps=-1 \
    ++trainer.sft.skip_validation=True \
    ++trainer.sft.save_interval=100 \
    model.activations_checkpoint_granularity=selective \
    model.activations_checkpoint_method=uniform \
    model.megatron_amp_O2=True \
    model.restore_from_path="$POLICY_MODEL_PATH" \
    model.optim.name=distributed_fused_adam \
    model.optim.lr=2e-6 \
    ~model.optim.sched \
    model.optim.weight_decay=0.01 \
    model.optim.betas=[0.9,0.95] \
    model.answer_only_loss=True \
    model.data.train_ds.micro_batch_size=1 \
    model.data.train_ds.global_batch_size="$GLOBAL_BATCH_SIZE" \
    model.data.train_ds.max_seq_length="$MAX_SEQ_LENGTH" \
    model.data.train_ds.file_path="$LABELED_SAMPLES_PATH" \
    model.data.train_ds.hf_dataset=True \
    exp_manager.explicit_log_dir="$RESULT_PATH" \
    exp_manager.checkpoint_callback_params.monitor=global_step \
    exp_manager.checkpoint_callback_params.mode=max \
    ++exp_manager.checkpoint_callback_params.save_top_k=3 \
    ++exp_manager.checkpoint_callback_params.save_nemo_on_train_end=True

  # Clearing checkpoints avoids loading them in the next iteration
  rm -rf "$GENERATE_SAMPLES_PATH"* # for generation
  rm -rf "$LABELED_SAMPLES_PATH"* # for labeling

  # for SFT trainer
  mv "$MODEL_OUTPUT_PATH" "$RESULT_PATH/temp.nemo"
  rm -rf "$RESULT_PATH"/checkpoints/*
  mv "$RESULT_PATH/temp.nemo" "$MODEL_OUTPUT_PATH"

  iter=$((iter + 1))
  if [[ "$ITER_LOG_PATH" != "null" ]]; then
    echo $iter >"$ITER_LOG_PATH" # write iters
  fi
done
