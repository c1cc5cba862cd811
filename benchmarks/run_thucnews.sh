#!/usr/bin/env bash
# Issues 3 and 4 benchmarks on the shared THUCNews titles; every step resumes or skips
# what is already done. Usage: bash benchmarks/run_thucnews.sh DATA_DIR OUT_DIR
default_out=runs/bench
# shellcheck source=benchmarks/common.sh
source "$(dirname "$0")/common.sh"

log "pipeline: mini teacher with MLM, every mode for bilstm and textcnn"
textdistill run benchmarks/thucnews-modes.yaml --data "$data" --out "$out/modes"
log "pipeline done"

if [ ! -f "$out/teacher-nomlm/textdistill.json" ]; then
  log "teacher without MLM"
  textdistill teacher train --config benchmarks/thucnews-modes.yaml \
    --data "$data" --mlm-epochs 0 --out "$out/teacher-nomlm" --resume -q
  textdistill evaluate --model "$out/teacher-nomlm" --data "$data" --split dev --no-efficiency
  log "teacher without MLM done"
fi

log "distillation cost: cached soft targets vs calling the teacher on every batch"
python benchmarks/distill_cost.py --teacher "$out/modes/teacher" --data "$data" --steps 60 \
  --out "$out/distill_cost.json"
log "all done"
