#!/usr/bin/env bash
# Online fine-tuning on variants of training games: ALE modes/difficulties of Freeway, Hero and Breakout
# that the pre-training data never showed (Breakout mode 12 hides the bricks). Compares the pre-trained
# torso with training from scratch.
#
# Compute scale: 20k online agent steps of training per run (the paper's budget; STEPS), one gradient step
# each, on one accelerator; 3 variants x 2 initialisations x 3 seeds = 18 runs. The periodic and final
# evaluations (episodes of up to 27,000 agent steps; --eval-every, --final-seeds, --final-episodes) can cost
# more emulator time than the training itself.
# List each game's valid modes and difficulties with `sql games online-variants --variants`: they differ
# per game, and the ones below are our choice of variants, not the paper's list.
set -euo pipefail

RUNS_ROOT="${RUNS_ROOT:-/data/sql/runs}"
PRETRAINED="${PRETRAINED:-${RUNS_ROOT}/atari40-sub-optimal-resnet101}"
STEPS="${STEPS:-20000}"                 # online environment steps per run
SEEDS="${SEEDS:-0 1 2}"
# game:mode:difficulty
VARIANTS="${VARIANTS:-freeway:1:0 hero:1:0 breakout:12:0}"

# Each run writes RUN/learning_curve.csv (the periodic evaluations) and RUN/eval/final.json (the final one).
for variant in ${VARIANTS}; do
  IFS=: read -r game mode difficulty <<<"${variant}"
  for seed in ${SEEDS}; do
    sql finetune-online --from "${PRETRAINED}" --game "${game}" --mode "${mode}" --difficulty "${difficulty}" \
      --steps "${STEPS}" --seed "${seed}" \
      --run-dir "${RUNS_ROOT}/finetune-online-${game}-m${mode}d${difficulty}-pretrained-s${seed}"
    # The baseline: same architecture (read from --from), randomly initialised.
    sql finetune-online --from "${PRETRAINED}" --init scratch --game "${game}" --mode "${mode}" \
      --difficulty "${difficulty}" --steps "${STEPS}" --seed "${seed}" \
      --run-dir "${RUNS_ROOT}/finetune-online-${game}-m${mode}d${difficulty}-scratch-s${seed}"
  done
done
