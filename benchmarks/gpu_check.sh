#!/usr/bin/env bash
# The vLLM replica path end to end, on a machine with an NVIDIA GPU (none is here, so the test
# suite skips it with that reason): a small model, 50 instructions, all four steps, then the
# run folder checked for nothing lost or duplicated.
#
#   bash benchmarks/gpu_check.sh                     # SmolLM2-360M-Instruct, 1 replica a GPU
#   MODEL=Qwen/Qwen2.5-0.5B-Instruct REPLICAS=2 bash benchmarks/gpu_check.sh
#
# Needs network access to PyPI and the model hub the first time (or both in local caches:
# set HF_HUB_OFFLINE=1 then). Prints the wall time and run.json's per-replica counts.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-HuggingFaceTB/SmolLM2-360M-Instruct}
REPLICAS=${REPLICAS:-1}
N=${N:-50}
VENV=${VENV:-.venv-gpu}
OUT=${OUT:-runs/gpu-check}
export RAY_USAGE_STATS_ENABLED=0

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || {
    echo "gpu_check: no NVIDIA GPU visible (nvidia-smi failed)"; exit 2; }
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    # vLLM first: it pins the torch it was built against; then the package with Ray.
    "$VENV/bin/pip" install --quiet vllm
    "$VENV/bin/pip" install --quiet -e '.[ray]'
fi
"$VENV/bin/python" -c "import vllm, ray, torch; print('vllm', vllm.__version__, 'ray', \
ray.__version__, 'cuda', torch.cuda.is_available())"

rm -rf "$OUT"
start=$(date +%s)
"$VENV/bin/selfinstruct" run --out "$OUT" --model "vllm:$MODEL?api=chat" \
    --replicas "$REPLICAS" --replica-gpus 1 --num-instructions "$N" --no-decontaminate
end=$(date +%s)

"$VENV/bin/python" - "$OUT" "$N" <<'EOF'
import json, sys
from selfinstruct.runfolder import RunFolder
from selfinstruct.io import read_jsonl

folder, n = RunFolder(sys.argv[1]), int(sys.argv[2])
kept = [r["instruction"] for r in read_jsonl(folder.instructions)]
labels = [json.loads(l)["instruction"] for l in folder.find_classification_file().read_text().splitlines()]
instances = [r["instruction"] for r in read_jsonl(folder.instances)]
assert len(kept) == n == len(set(kept)), f"{len(kept)} instructions, {len(set(kept))} distinct"
assert sorted(labels) == sorted(kept), "step 2 lost or repeated an instruction"
assert sorted(instances) == sorted(kept), "step 3 lost or repeated an instruction"
run = json.loads(folder.run_file.read_text())
assert run["steps"]["prepare"]["complete"]
for step, s in run["steps"].items():
    for label, m in s.get("members", {}).items():
        print(f"{step:>13} {label}: {m['succeeded']} answered, failures {m['failures']},"
              f" {m['completion_tokens']} completion tokens, {m['seconds_answering']:.1f} s")
print("usage", run["usage"])
print("gpu_check: OK")
EOF
echo "gpu_check: $N instructions, all four steps, $((end - start)) s wall (model load included)"
