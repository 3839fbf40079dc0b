#!/usr/bin/env bash
# The scaling study: pre-train networks of growing size on the same atari40 data, evaluate each, and fit
# score = a * params^b per architecture family with `sql scale-report`.
#
# Compute scale: one pre-training run per architecture, 8 in all. Parameters with the 40 atari40 heads
# (`sql pretrain --dry-run`): DQN CNN 26.8M, IMPALA 26.6M / 27.2M / 28.9M (width 1/2/4), ResNet-18 41.6M,
# -34 51.7M, -50 66.6M, -101 85.6M; of these, 26.2M are the heads. ResNet-101 at the paper's 10M steps is
# the TPU-pod run of examples/atari40_pretrain.sh; the CNN runs cost a small fraction of it.
# The data store comes from examples/atari40_pretrain.sh.
set -euo pipefail

DATA_ROOT="${DATA_ROOT:-/data/sql}"
RUNS_ROOT="${RUNS_ROOT:-/data/sql/runs}"
REPORT_DIR="${REPORT_DIR:-/data/sql/reports/scaling}"
COMPOSITION="${COMPOSITION:-sub-optimal}"
STEPS="${STEPS:-10000000}"
EVAL_EPISODES="${EVAL_EPISODES:-2}"     # episodes per game and seed
EVAL_SEEDS="${EVAL_SEEDS:-0-4}"
# name:arch:width, from the small baselines up to the headline ResNet.
MODELS="${MODELS:-dqn:dqn:1 impala-1x:impala:1 impala-2x:impala:2 impala-4x:impala:4 resnet18:resnet18:1 resnet34:resnet34:1 resnet50:resnet50:1 resnet101:resnet101:1}"

store="${DATA_ROOT}/atari40-${COMPOSITION}.zarr"
run_dirs=()
for model in ${MODELS}; do
  IFS=: read -r name arch width <<<"${model}"
  run_dir="${RUNS_ROOT}/scaling-${COMPOSITION}-${name}"
  sql pretrain --dry-run --games atari40 --arch "${arch}" --width "${width}"   # parameter count per part
  sql pretrain --data "${store}" --games atari40 --arch "${arch}" --width "${width}" \
    --steps "${STEPS}" --run-dir "${run_dir}"
  # Every run on the same games and protocol, so that the scores are comparable.
  sql eval "${run_dir}" --games atari40 --seeds "${EVAL_SEEDS}" --episodes "${EVAL_EPISODES}"
  run_dirs+=("${run_dir}")
done

# One fit per method, data composition and architecture family (ResNet vs IMPALA vs DQN CNN), as the paper
# compares them; writes scale_report.{png,md,csv,json} into REPORT_DIR. The x axis counts every parameter,
# as the paper does; the 40 game heads are about 26M of each model, so the second report counts only the
# shared (transferred) parameters.
sql scale-report "${run_dirs[@]}" --out "${REPORT_DIR}" --metric iqm --group-by method,composition,family
sql scale-report "${run_dirs[@]}" --out "${REPORT_DIR}-shared" --metric iqm --group-by method,composition,family \
  --params shared
