# Sourced by the benchmark scripts: DATA_DIR and OUT_DIR from the arguments (OUT_DIR
# defaulting to $default_out), and log(), which stamps a line into OUT_DIR/timeline.log.
set -euo pipefail
data=${1:-../shared/data/thucnews}
out=${2:-$default_out}
mkdir -p "$out"
log() { echo "[$(date -u +%FT%TZ)] $*" | tee -a "$out/timeline.log"; }
