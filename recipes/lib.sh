# Sourced by the shapes recipes (shapes-demo.sh, shapes-experiment.sh, stage2-ablation.sh): a
# recipe step's run-folder convention and the held-out question runs, written once.
# run needs OUT; questions needs N; SEGANSWER names the executable (default: seganswer).
# BACKBONE picks the MLLM of the demo architecture: qwen2.5-vl (the paper's, the shipped model) or
# qwen3-vl; BASE is its random-init preset (shapes-base, shapes-base-qwen3-vl).
SEGANSWER=${SEGANSWER:-seganswer}
BACKBONE=${BACKBONE:-qwen2.5-vl}
case "$BACKBONE" in
  qwen2.5-vl) BASE=shapes-base ;;
  qwen3-vl)   BASE=shapes-base-qwen3-vl ;;
  *) echo "BACKBONE=$BACKBONE: expected qwen2.5-vl or qwen3-vl" >&2; exit 2 ;;
esac

say() { printf '\n== %s\n' "$*" >&2; }

# run NAME COMMAND ARGS...: a training run into OUT/NAME; `--continue` skips it when finished,
# resumes it from its last checkpoint, starts it otherwise (train/runs.py's continue_decision)
run() {
  local name=$1; shift
  say "$name"; "$SEGANSWER" "$@" --out "$OUT/$name" --continue -q
}

# questions MODEL OUT_PREFIX: the held-out shapes-vqa questions with every second look, the model's
# masks and the annotated regions (OUT_PREFIX-mask, -bbox, -none, -mask-gt, -bbox-gt; resumable)
questions() {
  for roi in mask bbox none; do
    "$SEGANSWER" eval shapes-vqa --model "$1" --roi "$roi" --limit "$N" --out "$2-$roi" -q
  done
  for roi in mask bbox; do
    "$SEGANSWER" eval shapes-vqa --model "$1" --roi "$roi" --masks gt --limit "$N" --out "$2-$roi-gt" -q
  done
}
