#!/usr/bin/env bash
# The runtime distribution in a fresh virtual environment: it installs without torch or
# transformers, predicts with and serves an exported folder, and reports its size on disk
# and its cold start.
#
#   scripts/check-runtime.sh [EXPORTED_FOLDER]
#
# Without a folder, a tiny student is built and exported by the development environment
# (PYTHON, default: python). Installs pinned by constraints/lock.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
export PIP_DISABLE_PIP_VERSION_CHECK=1
tmp=$(mktemp -d)
server=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

wheel=$("$python" scripts/build_runtime.py --out "$tmp/dist" | tail -1)
echo "built $(basename "$wheel")"

model=${1:-}
if [ -z "$model" ]; then
  model="$tmp/model-onnx"
  "$python" - "$tmp/model" "$model" <<'EOF'
import sys
from textdistill.data.tokenization import build_tokenizer
from textdistill.deploy.export import export_model
from textdistill.models.folders import save_student
from textdistill.models.students import build_student

texts = ["球队比赛冠军进球联赛", "银行基金利率投资理财", "游戏玩家网游副本公测"] * 4
tok = build_tokenizer(texts, vocab_size=100)
model = build_student("bilstm", "small", len(tok), 3, embed_dim=8, hidden_dim=8)
save_student(sys.argv[1], model, tok, ["sports", "finance", "game"], max_len=16)
export_model(sys.argv[1], sys.argv[2], fmt="onnx", quantize="int8")
EOF
fi

"${PYTHON_VENV:-python3}" -m venv "$tmp/venv"
venv="$tmp/venv/bin"
"$venv/python" -m pip install -q -c constraints/lock.txt "${wheel}[serve]"

for heavy in torch transformers accelerate; do
  if "$venv/python" -c "import $heavy" 2>/dev/null; then
    echo "FAIL: $heavy is installed in the runtime environment" >&2
    exit 1
  fi
done
echo "not installed: torch, transformers, accelerate"

"$venv/textdistill-runtime" predict "$model" "球队 比赛 进球" "" --top-k 2

port=$("$venv/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$venv/textdistill-runtime" serve "$model" --port "$port" --log-level warning &
server=$!
for _ in $(seq 1 100); do
  if "$venv/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/healthz')" 2>/dev/null; then
    break
  fi
  sleep 0.2
done
"$venv/python" - "$port" <<'EOF'
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
req = urllib.request.Request(
    f"{base}/v1/classify",
    data=json.dumps({"texts": ["银行 基金 利率"], "top_k": 2}).encode(),
    headers={"Content-Type": "application/json"},
)
body = json.loads(urllib.request.urlopen(req).read())
assert body["results"][0]["label"], body
page = urllib.request.urlopen(f"{base}/").read().decode()
assert "/v1/classify" in page
print("served:", json.dumps(body["results"][0], ensure_ascii=False))
EOF
kill "$server"
wait "$server" 2>/dev/null || true
server=

site=$("$venv/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "runtime environment on disk: $(du -sm "$tmp/venv" | cut -f1) MB (site-packages $(du -sm "$site" | cut -f1) MB)"

times=()
for _ in 1 2 3 4 5; do
  start=$(date +%s.%N)
  "$venv/python" -c "import sys; from textdistill.runtime import load; load(sys.argv[1]).predict(['球队 比赛 进球'])" "$model"
  end=$(date +%s.%N)
  times+=("$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')")
done
median=$(printf "%s\n" "${times[@]}" | sort -n | sed -n 3p)
echo "cold start (a new python process: import, load, first prediction; 5 runs): ${times[*]} s, median ${median} s"
echo "runtime check passed"
