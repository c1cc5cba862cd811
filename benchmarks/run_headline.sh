#!/usr/bin/env bash
# Issue 6 headline benchmark: scenario B (few labels), scenario A (all labels, ensemble),
# the efficiency table against a bert-base-shaped teacher and the cached-vs-live training
# cost. Every step skips or resumes what is already done, so a killed run is restarted with
# the same command. About 2 hours on 2 CPU cores; run it in the background:
#   nohup bash benchmarks/run_headline.sh ../shared/data/thucnews runs/headline > headline.log 2>&1 &
default_out=runs/headline
# shellcheck source=benchmarks/common.sh
source "$(dirname "$0")/common.sh"

log "scenario B: few labels"
textdistill run benchmarks/thucnews-few.yaml --data "$data" --out "$out/b"
log "scenario B done"

log "scenario A: all labels, modes and ensemble"
textdistill run benchmarks/thucnews.yaml --data "$data" --out "$out/a"
log "scenario A done"

onnx="$out/a/exports/bilstm-soft-onnx-int8"
if [ ! -f "$onnx/eval_dev.json" ]; then
  log "export: the soft BiLSTM as int8 ONNX, evaluated on dev"
  textdistill export --model "$out/a/students/bilstm-soft" --format onnx --quantize int8 \
    --out "$onnx"
  textdistill evaluate --model "$onnx" --data "$data" --split dev --no-efficiency
  log "export done"
fi

if [ ! -f "$out/efficiency.json" ]; then
  log "efficiency: bert-base-shaped, mini, seed-sized and small students (1 thread)"
  python benchmarks/efficiency.py --data "$data" --split dev --threads 1 \
    --model "teacher mini=$out/a/teacher" \
    --model "bilstm small (soft)=$out/a/students/bilstm-soft" \
    --model "textcnn (soft)=$out/a/students/textcnn-soft" \
    --model "bilstm small (soft), ONNX int8=$onnx" \
    --out "$out/efficiency.json"
  log "efficiency done"
fi

if [ ! -f "$out/distill_cost.json" ]; then
  log "training cost: cached soft targets vs calling the teacher on every batch"
  python benchmarks/distill_cost.py --teacher "$out/a/teacher" --data "$data" --steps 60 \
    --out "$out/distill_cost.json"
  log "training cost done"
fi
python benchmarks/headline_tables.py "$out" > "$out/tables.md"
log "all done; tables in $out/tables.md"
