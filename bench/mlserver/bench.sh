#!/usr/bin/env bash
# MLServer behind coscale (router → agent → MLServer) versus MLServer called directly,
# in the same run: throughput and latency with wrk, and model load time.
#
# Usage: bench/mlserver/bench.sh            (env: DURATION=10 CONNECTIONS=8 ROUNDS=2 PIN=1)
# Needs: MLServer (COSCALE_MLSERVER or .venv-mlserver, see .ci/install-mlserver.sh), wrk,
# curl, a release coscale (built here if missing; COSCALE_BIN overrides).
# PIN=1 puts every server process (MLServer, coscale) on core 0 and wrk on core 1, so
# both setups get the same CPU budget.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
DURATION="${DURATION:-10}"; CONNECTIONS="${CONNECTIONS:-8}"; ROUNDS="${ROUNDS:-2}"; PIN="${PIN:-1}"
mlserver="${COSCALE_MLSERVER:-$root/.venv-mlserver/bin/mlserver}"
[ -x "$mlserver" ] || { echo "MLServer not found at $mlserver; run .ci/install-mlserver.sh" >&2; exit 1; }
mlserver="$(readlink -f "$mlserver")"
python="$(dirname "$mlserver")/python"
bin="${COSCALE_BIN:-$root/target/release/coscale}"
if [ ! -x "$bin" ]; then (cd "$root" && cargo build --release -p coscale-cli >&2); fi
command -v wrk >/dev/null || { echo "wrk not installed (apt-get install -y wrk)" >&2; exit 1; }

work="$(mktemp -d /tmp/coscale-mlbench-XXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
pin_server() { if [ "$PIN" = 1 ]; then taskset -a -p -c 0 "$1" >/dev/null; fi; }
run_wrk() { if [ "$PIN" = 1 ]; then taskset -c 1 wrk "$@"; else wrk "$@"; fi; }
free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; echo "timeout waiting for $1" >&2; return 1; }
now() { date +%s.%N; }

"$python" "$root/bench/mlserver/train_iris.py" "$work/model/iris" >/dev/null

# --- MLServer directly -------------------------------------------------------------
mkdir -p "$work/direct/iris"
ln -s "$work/model/iris/model.joblib" "$work/direct/iris/model.joblib"
echo '{"name":"iris","implementation":"mlserver_sklearn.SKLearnModel","parameters":{"uri":"./model.joblib"}}' > "$work/direct/iris/model-settings.json"
hp=$(free_port); gp=$(free_port); mp=$(free_port)
echo "{\"host\":\"127.0.0.1\",\"http_port\":$hp,\"grpc_port\":$gp,\"metrics_port\":$mp,\"parallel_workers\":0,\"load_models_at_startup\":false}" > "$work/direct/settings.json"
(cd "$work/direct" && exec "$mlserver" start "$work/direct" >"$work/direct.log" 2>&1) & pids+=($!)
direct="http://127.0.0.1:$hp"
wait_http "$direct/v2/health/ready"
t0=$(now); curl -sf -X POST "$direct/v2/repository/models/iris/load" >/dev/null; t1=$(now)
direct_load=$(echo "$t1 - $t0" | bc)
pin_server "${pids[0]}"

# --- coscale: up + one mlserver replica ----------------------------------------------
COSCALE_MLSERVER="$mlserver" "$bin" up --data-dir "$work/cs" --api-addr 127.0.0.1:0 --agent-addr 127.0.0.1:0 \
  --router-addr 127.0.0.1:0 --router-grpc-addr 127.0.0.1:0 --reconcile-seconds 0.2 >"$work/up.log" 2>&1 & pids+=($!)
for _ in $(seq 1 600); do [ -s "$work/cs/endpoints.json" ] && break; sleep 0.05; done
router=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["router_http"])' "$work/cs/endpoints.json")
printf 'apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: ml\nspec:\n  serverConfig: mlserver\n  replicas: 1\n' > "$work/server.yaml"
printf 'apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: iris\nspec:\n  storageUri: file://%s\n  requirements: [sklearn]\n' "$work/model/iris" > "$work/model.yaml"
"$bin" apply -f "$work/server.yaml" --data-dir "$work/cs" >/dev/null
# wait for the replica's MLServer to be up (a python child of the agent listening)
for _ in $(seq 1 600); do
  "$bin" get servers ml -o json --data-dir "$work/cs" 2>/dev/null | grep -q '"ready_replicas": *1' && break; sleep 0.05; done
for _ in $(seq 1 600); do ls -d /tmp/coscale-mlserver-ml-0-*/settings.json >/dev/null 2>&1 && break; sleep 0.05; done
agent_repo=$(ls -td /tmp/coscale-mlserver-ml-0-* | head -1)
agent_http=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["http_port"])' "$agent_repo/settings.json")
wait_http "http://127.0.0.1:$agent_http/v2/health/ready"
t0=$(now); "$bin" apply -f "$work/model.yaml" --data-dir "$work/cs" >/dev/null
for _ in $(seq 1 1200); do
  "$bin" get models iris -o json --data-dir "$work/cs" 2>/dev/null | grep -q '"state": *"ModelAvailable"' && break; sleep 0.02; done
t1=$(now); coscale_load=$(echo "$t1 - $t0" | bc)
pin_tree() { pin_server "$1" 2>/dev/null || true; for c in $(pgrep -P "$1" || true); do pin_tree "$c"; done; }
pin_tree "${pids[1]}"

cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body   = '{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}'
wrk.headers["Content-Type"] = "application/json"
LUA
curl -sf -H 'Content-Type: application/json' -d '{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}' "$router/v2/models/iris/infer" >/dev/null

bench() { # label url
  run_wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/post.lua" "$2" > "$work/wrk.out"
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")
  p50=$(awk '$1=="50%" {print $2}' "$work/wrk.out"); p99=$(awk '$1=="99%" {print $2}' "$work/wrk.out")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' "$work/wrk.out" | tr '\n' ' ')
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$rps" "$p50" "$p99" "${errs:-0}"
  echo "$rps" >> "$work/rps.$1"
}
echo
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s, pinned=$PIN, iris LogisticRegression, 1 row per request"
echo "| path | req/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|"
for _ in $(seq 1 "$ROUNDS"); do
  bench direct "$direct/v2/models/iris/infer"
  bench coscale "$router/v2/models/iris/infer"
done
d=$(awk '{s+=$1} END {print s/NR}' "$work/rps.direct"); c=$(awk '{s+=$1} END {print s/NR}' "$work/rps.coscale")
echo
printf 'mean req/s: direct %.0f, coscale %.0f, throughput loss %.1f %%\n' "$d" "$c" "$(echo "(1 - $c / $d) * 100" | bc -l)"
printf 'model load (first sklearn load in a fresh MLServer): direct load call %.3f s; coscale apply → ModelAvailable %.3f s\n' "$direct_load" "$coscale_load"
