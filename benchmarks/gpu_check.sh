#!/usr/bin/env bash
# benchmarks/gpu_check.sh: the GPU figures of issue 22 on one CUDA GPU, in at most 8 minutes. It measures:
#   1. tests    the CUDA-marked tests (pytest -m cuda: tests/test_cuda.py): passed, failed, skipped   <= 70 s
#   2. gpu      benchmarks/gpu.py --steps 20: tokens/s, MFU, step overhead, compile on/off and dashboard
#               on/off at the tiny_shakespeare_gpu shape and a ~100M-parameter one                  <= 120 s
#   3. quality  `tuilm train tiny_shakespeare_gpu --headless` for 3 minutes of training, scored on nanoGPT's
#               val text (benchmarks/quality.py --skip-nanogpt): bits/char, steps, wall time         <= 230 s
#   4. nanogpt  benchmarks/vs_nanogpt.py --device cuda: nanoGPT's own train.py against `tuilm train`,
#               steps/s (recorded as absent when the script is not there)                          <= 60 s
# Each part runs under its own time limit; one that fails or runs out of time is recorded as such (its exit
# status and the end of its output) and the next part runs. Every figure goes into one JSON file, with the GPU's
# name: gpu_check.json, or the path given as the first argument.
#
# Usage: TUILM_DATA_DIR=<folder with tiny_shakespeare.txt> bash benchmarks/gpu_check.sh [OUT.json]
# Without a CUDA GPU it says so and exits 2, having measured nothing.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check.json}
PY=${PYTHON:-python}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check.sh needs a CUDA GPU, and torch sees none here (nothing measured)" >&2
    exit 2
fi
if [ -z "${TUILM_DATA_DIR:-}" ] || [ ! -f "$TUILM_DATA_DIR/tiny_shakespeare.txt" ]; then
    echo "gpu_check.sh needs tiny_shakespeare.txt: set TUILM_DATA_DIR to the folder holding it" >&2
    exit 2
fi

PARTS=$(mktemp -d)
trap 'rm -rf "$PARTS"' EXIT
echo "gpu_check: 1 the CUDA tests, 2 benchmarks/gpu.py, 3 tiny_shakespeare_gpu for 3 minutes on nanoGPT's val text," \
    "4 nanoGPT's train.py against tuilm train; about 8 minutes, figures to $OUT" >&2

# part NAME LIMIT_S COMMAND...: runs COMMAND under LIMIT_S seconds; its stdout goes to $PARTS/NAME.out.
part() {
    local name=$1 limit=$2
    shift 2
    echo "gpu_check: $name (at most ${limit}s): $*" >&2
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$PARTS/$name.out" 2>"$PARTS/$name.err"
    echo "$? $((SECONDS - start))" >"$PARTS/$name.rc"
}

part tests 70 "$PY" -m pytest -q -n0 -p no:cacheprovider -m cuda tests/test_cuda.py --junitxml="$PARTS/tests.xml"
part gpu 120 "$PY" benchmarks/gpu.py --steps 20
part quality 230 "$PY" benchmarks/quality.py --recipe tiny_shakespeare_gpu --skip-nanogpt \
    --set train.time=3m --set train.max_steps=1000000
if [ -f benchmarks/vs_nanogpt.py ]; then
    part nanogpt 60 "$PY" benchmarks/vs_nanogpt.py --device cuda --json "$PARTS/nanogpt.json"
fi

"$PY" - "$PARTS" "$OUT" <<'EOF'
import json
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

parts, out = Path(sys.argv[1]), Path(sys.argv[2])


def read_json(path: Path):
    try:
        text = path.read_text()
        return json.loads(text[text.index("{"):])  # what a script printed before its JSON is not part of it
    except (OSError, ValueError):
        return None


report = {
    "benchmark": "gpu_check",
    "device": torch.cuda.get_device_name(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "parts": {},
}
for name in ("tests", "gpu", "quality", "nanogpt"):
    rc_file = parts / f"{name}.rc"
    if not rc_file.is_file():
        report["parts"][name] = {"status": "absent (benchmarks/vs_nanogpt.py is not there)"}
        continue
    rc, seconds = map(int, rc_file.read_text().split())
    status = "ok" if rc == 0 else "timed out" if rc in (124, 137) else f"failed (exit {rc})"
    entry = {"status": status, "seconds": seconds}
    if name == "tests":
        try:
            suite = ET.parse(parts / "tests.xml").getroot()
            suite = suite if suite.tag == "testsuite" else suite[0]
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            entry["figures"] = counts
        except (OSError, ET.ParseError, IndexError):
            entry["figures"] = None
    else:
        source = parts / ("nanogpt.json" if name == "nanogpt" else f"{name}.out")
        entry["figures"] = read_json(source)
    if rc != 0:
        entry["output_tail"] = ((parts / f"{name}.out").read_text() + (parts / f"{name}.err").read_text())[-2000:]
    report["parts"][name] = entry
out.write_text(json.dumps(report, indent=2) + "\n")
print(f"gpu_check: figures in {out}", file=sys.stderr)
print(json.dumps({k: v["status"] for k, v in report["parts"].items()}))
EOF
