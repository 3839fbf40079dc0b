#!/usr/bin/env bash
# Scaled Q-Learning pre-training on the 40 training games (atari40), on both data compositions of the
# paper: sub-optimal (checkpoints 0-9 of each DQN-Replay run) and near-optimal (all checkpoints).
#
# Compute scale (paper): ResNet-101 (85.6M parameters here, `sql pretrain --dry-run`), batch 512, 10M
# gradient steps on a TPU v3 with 64-128 cores. On one 8-GPU host expect weeks per run; shorten STEPS for a
# first try. Data: each DQN-Replay checkpoint holds 1M transitions, about 7 GB of raw 84x84 frames before
# compression. With all 5 runs the sub-optimal selection is 40 x 5 x 10 = 2,000 checkpoints (2B
# transitions) and near-optimal 40 x 5 x 51 = 10,200; the paper quotes 400M transitions for its
# sub-optimal set, so narrow RUNS to match a smaller budget. Put DATA_ROOT on a large disk.
#
# Every step is resumable: re-running this script continues where it stopped.
set -euo pipefail

DATA_ROOT="${DATA_ROOT:-/data/sql}"           # downloaded DQN-Replay files and Zarr stores
RUNS_ROOT="${RUNS_ROOT:-/data/sql/runs}"      # one run directory per pre-training run
ARCH="${ARCH:-resnet101}"                     # the paper's headline model
STEPS="${STEPS:-10000000}"                    # gradient steps (paper: 10M)
BATCH_SIZE="${BATCH_SIZE:-512}"               # global batch over all devices (paper: 512)
EVAL_EPISODES="${EVAL_EPISODES:-2}"           # episodes per game and seed (each up to 27,000 agent steps)
EVAL_SEEDS="${EVAL_SEEDS:-0-4}"               # each seed is one run of the bootstrap CIs
RUNS="${RUNS:-1-5}"                           # which of the 5 DQN-Replay runs of each game
COMPOSITIONS="${COMPOSITIONS:-sub-optimal near-optimal}"

# Both compositions download into one directory: near-optimal's files include sub-optimal's, and a
# re-run skips every file already verified.
replay_dir="${DATA_ROOT}/replay"

for composition in ${COMPOSITIONS}; do
  case "${composition}" in
    sub-optimal) checkpoints=0-9 ;;
    near-optimal) checkpoints=0-50 ;;
    *) echo "unknown composition ${composition}" >&2; exit 2 ;;
  esac
  store="${DATA_ROOT}/atari40-${composition}.zarr"
  run_dir="${RUNS_ROOT}/atari40-${composition}-${ARCH}"

  # 1. Download (verified, resumable) the checkpoints of this composition for the 40 games.
  sql fetch-data --games atari40 --subset "${composition}" --runs "${RUNS}" --out "${replay_dir}"

  # 2. Shard exactly this composition's checkpoints into one Zarr store the multi-game sampler reads.
  sql shard "${replay_dir}" "${store}" --games atari40 --runs "${RUNS}" --checkpoints "${checkpoints}"

  # 3. Pre-train one network on all 40 games (data-parallel over every visible device).
  sql pretrain --data "${store}" --games atari40 --arch "${ARCH}" \
    --batch-size "${BATCH_SIZE}" --steps "${STEPS}" --run-dir "${run_dir}"

  # 4. Evaluate the newest checkpoint on the 40 games (Dopamine's protocol: sticky actions, 27,000-step
  #    cap; 40 games x 5 seeds x 2 episodes = 400 episodes, at most 10.8M agent steps). Writes
  #    RUN/eval/*.json with the human-normalized IQM, median and mean and their bootstrap CIs.
  sql eval "${run_dir}" --games atari40 --seeds "${EVAL_SEEDS}" --episodes "${EVAL_EPISODES}"
done
