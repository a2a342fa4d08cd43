#!/usr/bin/env bash
# Train the shipped `shapes` demo model from nothing, on CPU, with seganswer's own commands:
#   shapes-world data -> stand-in pretraining (SAM from clicks, then everything) -> Stage 1 (projector, then LoRA) -> merge-lora
#   -> Stage 2 (interleaved SFT) -> Stage 3 (DAPO) -> final model folder.
# About 65 minutes on 2 CPU cores. Seeded (data seeds SEED*100+1..9, training seed SEED); a rerun
# from scratch on the same machine and thread count retraces the run (verified: same data, metrics, weights;
# python recipes/compare-runs.py RUN_A RUN_B compares two runs step by step).
# Resumable: rerun the same command after a kill; finished steps are skipped and an interrupted
# stage continues from its last checkpoint.
#
#   bash recipes/shapes-demo.sh [OUT]        # OUT defaults to runs/shapes-demo
#   bash recipes/shapes-experiment.sh OUT/final OUT/experiment   # the mask/bbox/none comparison
#   BACKBONE=qwen3-vl bash recipes/shapes-demo.sh runs/shapes-demo-qwen3   # the same on Qwen3-VL
#                                                 # (from shapes-base-qwen3-vl; BACKBONE=qwen2.5-vl: the default)
#
# Every stage keeps its run folder (settings.json, metrics.jsonl, checkpoints/, model/) under OUT;
# `seganswer plot OUT/<stage>` draws its curves. docs/shapes-experiment.md explains the settings.
set -euo pipefail

OUT=${1:-runs/shapes-demo}
WORLD=${WORLD:-demo}           # the shapes world of every data set but the closeups (wide: docs/data.md)
# Stage 3's prompts: the demo world's RL questions; in the wide world its questions in every prompt
# format (free text, V*/MMBench multiple choice, yes/no), so that DAPO sees the formats Stage 2 taught.
if [[ $WORLD == demo ]]; then RL_KIND=rl; else RL_KIND=vqa; fi
SEED=${SEED:-0}                 # data seeds are SEED*100 + 1..9; the benchmark uses seed 100003
POINTS_STEPS=${POINTS_STEPS:-1000}
STANDIN_STEPS=${STANDIN_STEPS:-2400}
PROJECTOR_STEPS=${PROJECTOR_STEPS:-200}
LORA_STEPS=${LORA_STEPS:-400}
STAGE2_STEPS=${STAGE2_STEPS:-1600}
STAGE3_STEPS=${STAGE3_STEPS:-60}
DATA_DIV=${DATA_DIV:-1}         # divides every data set's size (a quick smoke run of the recipe)
mkdir -p "$OUT/data"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # say, run

# data NAME ARGS...: a shapes-world folder, written once (a folder cut short by a kill is rewritten)
data() {
  local name=$1 n=$(( ($2 + DATA_DIV - 1) / DATA_DIV )); shift 2
  if [[ -f "$OUT/data/$name/seganswer_data.json" ]]; then return; fi
  "$SEGANSWER" data synth --out "$OUT/data/$name" --overwrite --n "$n" --json "$@" > /dev/null
}

s=$((SEED * 100))
say "data"
{ data standin-ref 12000 --world "$WORLD" --kind refseg --seed $((s + 1))
  data standin-qa  12000 --world "$WORLD" --kind vqa    --seed $((s + 3))
  data rl          2000  --world "$WORLD" --kind "$RL_KIND" --seed $((s + 8)); } & first=$!
{ data qseg        8000  --world "$WORLD" --kind qseg   --seed $((s + 6))
  data closeup-ref 3000  --world closeup --kind refseg --seed $((s + 2))
  data closeup-qa  6000  --world closeup --kind vqa    --seed $((s + 4))
  data ref         8000  --world "$WORLD" --kind refseg --seed $((s + 5))
  data vqa         8000  --world "$WORLD" --kind vqa    --seed $((s + 7))
  data val-ref     64    --world "$WORLD" --kind refseg --seed $((s + 9)); } & second=$!
wait $first; wait $second
D="$OUT/data"

# Not a stage of the paper: the stand-in for the pretrained MLLM and SAM 2.1 it starts from.
# First SAM 2.1 alone learns to segment the shape under a click (its promptable pretraining), then
# every weight trains on segmentation through <|seg|> (clicks alongside) and on questions.
run 0-sam-points pretrain-standin -c standin-shapes --phase points --model "$BASE" --seed "$SEED" \
  --data ref="$D/standin-ref":3 --data closeup="$D/closeup-ref":1 --val-data "$D/val-ref" --max-steps "$POINTS_STEPS"
run 0-standin pretrain-standin -c standin-shapes --model "$OUT/0-sam-points/model" --seed "$SEED" \
  --data ref="$D/standin-ref":3 --data closeup="$D/closeup-ref":1 \
  --data qa="$D/standin-qa":3 --data closeup-qa="$D/closeup-qa":1 \
  --val-data "$D/val-ref" --max-steps "$STANDIN_STEPS"

# From here on, the paper's stages and freezing rules.
run 1-stage1-projector train-stage1 -c stage1-shapes --phase projector --model "$OUT/0-standin/model" \
  --seed "$SEED" --data ref="$D/ref" --val-data "$D/val-ref" --max-steps "$PROJECTOR_STEPS"
run 2-stage1-lora train-stage1 -c stage1-shapes --phase lora --model "$OUT/1-stage1-projector/model" \
  --seed "$SEED" --data ref="$D/ref" --data qseg="$D/qseg" --val-data "$D/val-ref" --max-steps "$LORA_STEPS"
if [[ ! -f "$OUT/2-merged/seganswer.json" ]]; then
  say "merge-lora"; "$SEGANSWER" merge-lora "$OUT/2-stage1-lora" "$OUT/2-merged" --overwrite -q
fi
run 3-stage2 train-stage2 -c stage2-shapes --model "$OUT/2-merged" --seed "$SEED" \
  --data vqa="$D/vqa" --max-steps "$STAGE2_STEPS"
run 4-stage3 train-stage3 -c stage3-shapes --model "$OUT/3-stage2/model" --seed "$SEED" \
  --data rl="$D/rl" --max-steps "$STAGE3_STEPS"

if [[ ! -f "$OUT/final/seganswer.json" ]]; then
  rm -rf "$OUT/final.tmp" && cp -r "$OUT/4-stage3/model" "$OUT/final.tmp" && mv "$OUT/final.tmp" "$OUT/final"
fi
say "final model: $OUT/final  (on qwen2.5-vl, ship it: cp -r $OUT/final/. src/seganswer_cli/assets/shapes/)"
