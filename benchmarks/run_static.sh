#!/usr/bin/env bash
# Issue 17: the static student on THUCNews scenario A (40,000 labels, 5,000-row selection
# holdout, dev reported), next to the scenario A models it is compared with.
#
#   nohup bash benchmarks/run_static.sh ../shared/data/thucnews runs/static TEACHER BILSTM_NONE \
#       > static.log 2>&1 &
#
# TEACHER and BILSTM_NONE are scenario A's `mini` teacher and `bilstm-none` (from
# `textdistill run benchmarks/thucnews.yaml`, or the modes benchmark, which reproduces them);
# the script trains textcnn-none, builds scenario A's ensemble (teacher + bilstm-none +
# textcnn-none), then the static students: none, soft from the mini teacher, soft from the
# ensemble with two augmented copies per title (as the ensemble BiLSTM), evaluates them on
# dev and exports them to int8 ONNX. Every step is skipped when its output exists, so a
# killed run resumes with the same command. The efficiency table (1 thread, against the
# bert-base-shaped reference) is a separate command, run on an idle machine:
#   python benchmarks/efficiency.py --data DATA --split dev --threads 1 \
#       --model "teacher mini=TEACHER" --model "bilstm small (none)=BILSTM_NONE" \
#       --model "static (ensemble)=OUT/static-ensemble" \
#       --model "static (ensemble), ONNX int8=OUT/static-ensemble-int8" --out OUT/efficiency.json
default_out=runs/static
# shellcheck source=benchmarks/common.sh
source "$(dirname "$0")/common.sh"
teacher=${3:?scenario A teacher folder}
bilstm_none=${4:?scenario A bilstm-none folder}
config=benchmarks/thucnews.yaml
# Static settings, chosen on the selection holdout (docs/BENCHMARKS.md, issue 17).
static_args=(--student static --lr 0.01 --ngram-orders 2)

step() { # step OUT CMD...: run CMD unless OUT/textdistill.json exists
  local dest=$1
  shift
  if [ ! -f "$dest/textdistill.json" ]; then
    log "start $dest"
    "$@"
    log "done $dest"
  fi
}
evaluate() {
  if [ ! -f "$1/eval_dev.json" ]; then
    textdistill evaluate --model "$1" --data "$data" --split dev --no-efficiency > /dev/null
  fi
}

step "$out/textcnn-none" textdistill distill --config "$config" --data "$data" \
  --student textcnn --preset default --mode none --out "$out/textcnn-none" --quiet
step "$out/ensemble" textdistill ensemble --member "$teacher" --member "$bilstm_none" \
  --member "$out/textcnn-none" --out "$out/ensemble"
step "$out/static-none" textdistill distill --config "$config" --data "$data" \
  "${static_args[@]}" --mode none --out "$out/static-none" --quiet
step "$out/static-soft" textdistill distill --config "$config" --data "$data" \
  "${static_args[@]}" --mode soft --teacher "$teacher" --out "$out/static-soft" --quiet
step "$out/static-ensemble" textdistill distill --config "$config" --data "$data" \
  "${static_args[@]}" --mode soft --teacher "$out/ensemble" --augment-copies 2 \
  --out "$out/static-ensemble" --quiet
for m in textcnn-none static-none static-soft static-ensemble; do
  evaluate "$out/$m"
done
for m in static-soft static-ensemble; do
  step "$out/$m-int8" textdistill export --model "$out/$m" --format onnx --quantize int8 \
    --out "$out/$m-int8"
  evaluate "$out/$m-int8"
done
log "all done"
