#!/usr/bin/env bash
# Offline fine-tuning of a pre-trained Scaled QL network on the 5 held-out games (Alien, MsPacman, Pong,
# SpaceInvaders, StarGunner), against training the same network from scratch on the same data.
#
# Compute scale: each game trains on about 2M transitions of its own data (TRANSITIONS; here the first two
# 1M-transition checkpoints of one DQN-Replay run, CHECKPOINTS), for STEPS gradient steps of batch 32
# (finetune-offline's defaults: 50k steps, ours) on one accelerator, then plays a final evaluation
# (5 seeds x 2 episodes of up to 27,000 agent steps) into RUN/eval/final.json. The script runs
# 5 games x 2 initialisations = 10 such runs; the data is 5 x 2 checkpoint downloads.
#
# Needs a pre-trained run (examples/atari40_pretrain.sh). Resumable: re-run to continue.
set -euo pipefail

DATA_ROOT="${DATA_ROOT:-/data/sql}"
RUNS_ROOT="${RUNS_ROOT:-/data/sql/runs}"
PRETRAINED="${PRETRAINED:-${RUNS_ROOT}/atari40-sub-optimal-resnet101}"   # the run to start from
GAMES="${GAMES:-Alien MsPacman Pong SpaceInvaders StarGunner}"           # the heldout5 set
RUN_ID="${RUN_ID:-1}"                   # which DQN-Replay run of each game supplies the data (1-5)
CHECKPOINTS="${CHECKPOINTS:-0-1}"       # which of its checkpoints: 2 x 1M transitions
TRANSITIONS="${TRANSITIONS:-2000000}"   # rows of each game's data to train on (paper: about 2M)
STEPS="${STEPS:-50000}"                 # gradient steps per fine-tuning run

replay_dir="${DATA_ROOT}/replay-heldout5"
store="${DATA_ROOT}/heldout5-finetune.zarr"

# The held-out games' fine-tuning data, in one store.
sql fetch-data --games "${GAMES// /,}" --runs "${RUN_ID}" --checkpoints "${CHECKPOINTS}" \
  --out "${replay_dir}"
sql shard "${replay_dir}" "${store}"

# Each run writes RUN/metrics.jsonl and its final evaluation, RUN/eval/final.json (raw and human-normalized).
for game in ${GAMES}; do
  # Pre-trained torso, spatial embedding and projection; a new head for the game.
  sql finetune-offline --from "${PRETRAINED}" --game "${game}" --data "${store}" \
    --runs "${RUN_ID}" --checkpoints "${CHECKPOINTS}" --transitions "${TRANSITIONS}" --steps "${STEPS}" \
    --run-dir "${RUNS_ROOT}/finetune-offline-${game}-pretrained"
  # The baseline: the same architecture (taken from --from) and data, randomly initialised.
  sql finetune-offline --from "${PRETRAINED}" --init scratch --game "${game}" --data "${store}" \
    --runs "${RUN_ID}" --checkpoints "${CHECKPOINTS}" --transitions "${TRANSITIONS}" --steps "${STEPS}" \
    --run-dir "${RUNS_ROOT}/finetune-offline-${game}-scratch"
done
