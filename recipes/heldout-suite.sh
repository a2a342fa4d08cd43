#!/usr/bin/env bash
# The held-out suite of the shapes model (docs/shapes-experiment.md, "Outside its own template"):
# questions from a seed no recipe trains on (100003), in the wide world (any canvas, background and
# prompt format), asked through the benchmark commands users run:
#   vstar   `data synth --layout vstar`  -> `seganswer eval vstar`   (V*'s multiple-choice layout)
#   pope    `data synth --layout pope`   -> `seganswer eval pope`    (POPE's yes/no, three settings)
#   vqa     `data synth --kind vqa`      -> `seganswer eval shapes-vqa` (free text, V*/MMBench multiple
#                                           choice and yes/no mixed; accuracy per format)
#   refseg  `data synth --kind refseg`   -> `seganswer eval shapes-refseg`
# Each question benchmark with --roi mask|bbox|none as the model decides (--opening model: the paper's
# method, where "segments before answering" is measured), the same three asked the same way
# (--opening forced: each mode writes only the answer, the like-for-like comparison of the looks),
# the looks through the questions' annotated regions (--masks gt, shapes-vqa), and the mask look without zoom
# (a copy of the model whose view keeps the global view's cells, the paper's rule).
# Paired comparisons: `seganswer eval report` (McNemar's exact test against the first run).
#
#   bash recipes/heldout-suite.sh MODEL [OUT]
#     MODEL  model folder (default: the shipped shapes model's folder)
#     OUT    default runs/heldout-suite
# Resumable: finished data folders and eval runs are kept; interrupted evals continue.
set -euo pipefail

MODEL=${1:-}
OUT=${2:-runs/heldout-suite}
N=${N:-200}                 # questions per benchmark folder (POPE: N/2 scenes, a yes and a no each, per setting)
SEED=100003                 # the benchmarks' seed: no recipe trains on it
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # say, SEGANSWER
if [[ -z "$MODEL" ]]; then
  MODEL=$("$(dirname "$(command -v "$SEGANSWER")")/python" -c \
    'import pathlib, seganswer_cli; print(pathlib.Path(seganswer_cli.__file__).parent / "assets" / "shapes")')
fi
mkdir -p "$OUT/data"
D="$OUT/data"

synth() {  # synth NAME ARGS...: a held-out folder, written once
  local name=$1; shift
  if [[ ! -f "$D/$name/.done" ]]; then
    "$SEGANSWER" data synth --world wide --seed "$SEED" --out "$D/$name" --overwrite --json "$@" > /dev/null
    touch "$D/$name/.done"
  fi
}
say "held-out data (seed $SEED, wide world)"
synth vstar  --kind vqa --layout vstar --n "$N"
synth pope   --kind vqa --layout pope --n $(( N / 2 ))
synth vqa    --kind vqa --n "$N"
synth refseg --kind refseg --n "$N"

# The mask look without zoom: the same weights, the view of the paper (kept cells of the global view
# at their integer positions).
NOZOOM="$OUT/model-nozoom"
if [[ ! -f "$NOZOOM/seganswer.json" ]]; then
  rm -rf "$NOZOOM.tmp" && cp -r "$MODEL" "$NOZOOM.tmp"
  python3 - "$NOZOOM.tmp/seganswer.json" <<'EOF'
import json, sys
path = sys.argv[1]
info = json.load(open(path))
info.setdefault("view", {})["zoom"] = False
json.dump(info, open(path, "w"), indent=2)
EOF
  mv "$NOZOOM.tmp" "$NOZOOM"
fi

ev() {  # ev BENCH NAME ARGS...: one eval run into OUT/NAME
  local bench=$1 name=$2; shift 2
  say "$name"
  "$SEGANSWER" eval "$bench" --out "$OUT/$name" -q "$@"
}
for bench in vstar pope vqa; do
  cmd=$bench; [[ $bench == vqa ]] && cmd=shapes-vqa
  data=(--data "$D/$bench")
  for roi in mask bbox none; do
    ev "$cmd" "$bench-$roi" "${data[@]}" --model "$MODEL" --roi "$roi"
  done
  for roi in mask bbox; do
    ev "$cmd" "$bench-$roi-forced" "${data[@]}" --model "$MODEL" --roi "$roi" --opening forced
  done
  if [[ $bench == vqa ]]; then   # V*'s and POPE's layouts carry no regions
    for roi in mask bbox; do
      ev "$cmd" "$bench-$roi-gt" "${data[@]}" --model "$MODEL" --roi "$roi" --opening forced --masks gt
    done
  fi
  ev "$cmd" "$bench-mask-nozoom" "${data[@]}" --model "$NOZOOM" --roi mask
done
ev shapes-refseg refseg --data "$D/refseg" --model "$MODEL"

say "reports"
for bench in vstar pope vqa; do
  runs=("$OUT/$bench"-{mask,bbox,none,mask-forced,bbox-forced,mask-nozoom})
  if [[ $bench == vqa ]]; then runs+=("$OUT/$bench"-{mask-gt,bbox-gt}); fi
  "$SEGANSWER" eval report "${runs[@]}" --markdown > "$OUT/report-$bench.md"
  # like for like: the forced mask look paired with the forced box crop and with no look
  "$SEGANSWER" eval report "$OUT/$bench"-{mask-forced,bbox-forced,none} --markdown > "$OUT/report-$bench-forced.md"
done
"$SEGANSWER" eval report "$OUT/refseg" --markdown > "$OUT/report-refseg.md"
cat "$OUT"/report-*.md
echo "wrote $OUT"
