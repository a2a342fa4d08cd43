#!/usr/bin/env bash
# The miniature replication of the paper's claim (docs/shapes-experiment.md): the same model answers
# the held-out shapes-vqa questions (seed 100003, never trained on) with a pixel-level second look
# (--roi mask), a box crop (--roi bbox) and no second look (--roi none); the same with the
# questions' annotated regions in place of the model's masks (--masks gt: oracle grounding);
# shapes-refseg scores its masks; the untrained architecture (BASE: shapes-base, or with
# BACKBONE=qwen3-vl shapes-base-qwen3-vl) is the floor. One table,
# the curves of every training stage, and a contact sheet of trajectories. With the recipe's folder
# (RUNS), the same comparison for the model after the stand-in and after Stage 2 (report-stages.md).
#
#   bash recipes/shapes-experiment.sh [MODEL] [OUT] [RUNS]
#     MODEL  model folder or preset (default: shapes, the shipped model)
#     OUT    where the eval runs, report and figures go (default: runs/shapes-experiment)
#     RUNS   the recipe's folder, for the training curves (default: runs/shapes-demo; skipped if absent)
#   BACKBONE=qwen3-vl bash recipes/shapes-experiment.sh runs/shapes-demo-qwen3/final OUT runs/shapes-demo-qwen3
# Resumable: eval runs continue where they stopped.
set -euo pipefail

MODEL=${1:-shapes}
OUT=${2:-runs/shapes-experiment}
RUNS=${3:-runs/shapes-demo}
N=${N:-200}                     # questions per benchmark (the generated sets hold 200)
mkdir -p "$OUT"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # questions

questions "$MODEL" "$OUT/vqa"
"$SEGANSWER" eval shapes-refseg --model "$MODEL" --limit "$N" --out "$OUT/refseg" -q
"$SEGANSWER" eval shapes-vqa --model "$BASE" --roi mask --limit "$N" --out "$OUT/vqa-untrained" -q

"$SEGANSWER" eval report "$OUT"/vqa-{mask,bbox,none,mask-gt,bbox-gt,untrained} --markdown > "$OUT/report-vqa.md"
# the paper's claim with the region each question is about, each look paired with the mask view
"$SEGANSWER" eval report "$OUT"/vqa-{mask-gt,bbox-gt,none} --markdown > "$OUT/report-regions.md"
"$SEGANSWER" eval report "$OUT/refseg" --markdown > "$OUT/report-refseg.md"
cat "$OUT/report-vqa.md" "$OUT/report-regions.md" "$OUT/report-refseg.md"
"$SEGANSWER" eval sheet "$OUT/vqa-mask" "$OUT/vqa-bbox" --out "$OUT/contact-sheet.png"

if [[ -d "$RUNS" ]]; then
  stages=()
  for stage in 0-standin 3-stage2; do
    if [[ -f "$RUNS/$stage/model/seganswer.json" ]]; then
      questions "$RUNS/$stage/model" "$OUT/stages/$stage"
      stages+=("$OUT/stages/$stage"-{mask,bbox,none,mask-gt,bbox-gt})
    fi
  done
  if (( ${#stages[@]} )); then
    "$SEGANSWER" eval report "${stages[@]}" --markdown > "$OUT/report-stages.md"
  fi
  for run in 0-sam-points 0-standin 1-stage1-projector 2-stage1-lora 3-stage2 4-stage3; do
    if [[ -f "$RUNS/$run/metrics.jsonl" ]]; then
      "$SEGANSWER" plot "$RUNS/$run" --out "$OUT/curves-$run.png"
    fi
  done
fi
echo "wrote $OUT"
