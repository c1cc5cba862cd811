#!/usr/bin/env bash
# Issue 17: the transformer student (2 of the `mini` teacher's 4 layers, initialised from
# them) on THUCNews scenario A, in modes none / soft / hidden, evaluated on dev and
# exported to int8 ONNX.
#
#   nohup bash benchmarks/run_transformer.sh ../shared/data/thucnews runs/transformer TEACHER \
#       > transformer.log 2>&1 &
#
# TEACHER is scenario A's `mini` teacher. Same protocol as every scenario A student (40,000
# training rows, the 5,000-row selection holdout, seed, 4 epochs, patience 2) but the
# teacher's own fine-tuning learning rate (5e-4, benchmarks/thucnews.yaml), since the
# students' 2e-3 is a BiLSTM's; not tuned further. Steps whose folder exists are skipped.
default_out=runs/transformer
# shellcheck source=benchmarks/common.sh
source "$(dirname "$0")/common.sh"
teacher=${3:?scenario A teacher folder}
config=benchmarks/thucnews.yaml
args=(--student transformer --layers 2 --lr 0.0005 --teacher "$teacher")

for mode in soft none hidden; do
  dest="$out/transformer2-$mode"
  if [ ! -f "$dest/textdistill.json" ]; then
    log "start $dest"
    textdistill distill --config "$config" --data "$data" "${args[@]}" --mode "$mode" --out "$dest"
    log "done $dest"
  fi
  if [ ! -f "$dest/eval_dev.json" ]; then
    textdistill evaluate --model "$dest" --data "$data" --split dev --no-efficiency > /dev/null
  fi
done
int8="$out/transformer2-soft-int8"
if [ ! -f "$int8/textdistill.json" ]; then
  textdistill export --model "$out/transformer2-soft" --format onnx --quantize int8 --out "$int8"
  textdistill evaluate --model "$int8" --data "$data" --split dev --no-efficiency > /dev/null
fi
log "all done"
