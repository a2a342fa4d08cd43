#!/usr/bin/env bash
# Stage 2's two departures of the shipped recipe, one at a time, from the same merged Stage 1 model:
# region_share (half the segmenting conversations look at the annotated region) and seg_loss
# (SAM 2.1's mask losses on the <|seg|> mask). Each variant trains Stage 2 with the shipped
# settings (configs/stage2-shapes.yaml, seed 0) except those two, then answers the held-out
# shapes-vqa questions (seed 100003) with each second look and segments shapes-refseg; a report per
# variant (report-NAME.md: each look paired with its mask view) and report-refseg.md
# (docs/shapes-experiment.md, "What Stage 2's departures cost"). About 35 minutes on 2 CPU cores.
#
#   bash recipes/stage2-ablation.sh MERGED VQA OUT
#     MERGED  the merged Stage 1 model (the recipe's OUT/2-merged)
#     VQA     the Stage 2 questions (the recipe's OUT/data/vqa)
#     OUT     one folder per variant (Stage 2 run + evals), the reports
#   VARIANTS="name:region_share:seg_loss ..." (default: all four), STEPS (default 1600),
#   PARALLEL=1 runs the variants side by side (a GPU, or a machine with cores to spare).
# Resumable: finished runs and evals are kept, interrupted ones continue.
set -euo pipefail

MERGED=$1 VQA=$2 OUT=$3
VARIANTS=${VARIANTS:-"plain:0:0 region:0.5:0 segloss:0:1 both:0.5:1"}
STEPS=${STEPS:-1600}
N=${N:-200}
PARALLEL=${PARALLEL:-0}
mkdir -p "$OUT"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # run, questions

variant() {
  local name=$1 region=$2 seg=$3
  run "$name/stage2" train-stage2 -c stage2-shapes --model "$MERGED" --seed 0 --data vqa="$VQA" \
    --region-share "$region" --seg-loss "$seg" --max-steps "$STEPS"
  questions "$OUT/$name/stage2/model" "$OUT/$name/vqa"
  "$SEGANSWER" eval shapes-refseg --model "$OUT/$name/stage2/model" --limit "$N" --out "$OUT/$name/refseg" -q
}

pids=()
for v in $VARIANTS; do
  IFS=: read -r name region seg <<< "$v"
  if [[ $PARALLEL == 1 ]]; then variant "$name" "$region" "$seg" & pids+=($!); else variant "$name" "$region" "$seg"; fi
done
for pid in "${pids[@]}"; do wait "$pid"; done

refseg=()
for v in $VARIANTS; do
  name=${v%%:*}
  # each look paired with the same variant's mask view (the report's last row)
  "$SEGANSWER" eval report "$OUT/$name"/vqa-{mask,bbox,none,mask-gt} --markdown > "$OUT/report-$name.md"
  refseg+=("$OUT/$name/refseg")
  cat "$OUT/report-$name.md"
done
"$SEGANSWER" eval report "${refseg[@]}" --markdown > "$OUT/report-refseg.md"
cat "$OUT/report-refseg.md"
