#!/usr/bin/env bash
# MLServer behind coscale (router → agent → MLServer) versus MLServer called directly,
# in the same run: throughput and latency with wrk, and model load time.
#
# Usage: bench/mlserver/bench.sh            (env: DURATION=10 CONNECTIONS=8 ROUNDS=2 PIN=1
#                                            OUT=bench/results/mlserver-<date>.md)
# Needs: MLServer (COSCALE_MLSERVER or .venv-mlserver, see .ci/install-mlserver.sh), wrk,
# curl, a release coscale (built here if missing; COSCALE_BIN overrides).
# PIN=1 puts every server process (MLServer, coscale) on core 0 and wrk on core 1, so
# both setups get the same CPU budget. NICE=-10 raises the priority of every process of
# both setups and of wrk alike (renice), so other work on a shared machine disturbs
# the comparison less (NICE=0: leave priorities alone); the agents and their MLServers
# inherit it from `coscale up`.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=../lib.sh
source "$root/bench/lib.sh"   # bench_free_port, bench_cpu_ticks
DURATION="${DURATION:-10}"; CONNECTIONS="${CONNECTIONS:-8}"; ROUNDS="${ROUNDS:-2}"; PIN="${PIN:-1}"; NICE="${NICE:--10}"
mlserver="${COSCALE_MLSERVER:-$root/.venv-mlserver/bin/mlserver}"
[ -x "$mlserver" ] || { echo "MLServer not found at $mlserver; run .ci/install-mlserver.sh" >&2; exit 1; }
mlserver="$(readlink -f "$mlserver")"
python="$(dirname "$mlserver")/python"
bin="${COSCALE_BIN:-$root/target/release/coscale}"
if [ ! -x "$bin" ]; then (cd "$root" && cargo build --release -p coscale-cli >&2); fi
command -v wrk >/dev/null || { echo "wrk not installed (apt-get install -y wrk)" >&2; exit 1; }

exec 3>&2   # stderr, also for checks whose own output wait_until discards
out="${OUT:-$root/bench/results/mlserver-$(date -u +%Y%m%d-%H%M%S).md}"
mkdir -p "$(dirname "$out")"
exec > >(tee "$out")
echo "# MLServer behind coscale versus MLServer directly"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "- machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown); binary: $bin"
echo "- command: \`DURATION=$DURATION CONNECTIONS=$CONNECTIONS ROUNDS=$ROUNDS PIN=$PIN NICE=$NICE bench/mlserver/bench.sh\`"
echo "- MLServer $("$python" -c 'import mlserver; print(mlserver.__version__)'), parallel_workers 0, in both setups"

work="$(mktemp -d /tmp/coscale-mlbench-XXXX)"
pids=()
keep=0
# (waits for these pids only: a bare `wait` would also wait for the `tee` of this script's own output)
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; [ "$keep" = 1 ] || rm -rf "$work"; }
trap cleanup EXIT
pin_server() { if [ "$PIN" = 1 ]; then taskset -a -p -c 0 "$1" >/dev/null; fi; }
run_wrk() { if [ "$PIN" = 1 ]; then nice -n "$NICE" taskset -c 1 wrk "$@"; else nice -n "$NICE" wrk "$@"; fi; }
# wait_until WHAT SECONDS COMMAND...: polls COMMAND every 50 ms; fails naming WHAT.
wait_until() {
  local what="$1" secs="$2"; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || { echo "timed out after ${secs}s waiting for $what (work dir $work kept)" >&2; keep=1; return 1; }
    sleep 0.05
  done
}
wait_http() { wait_until "$1" 300 curl -sf -o /dev/null "$1"; }
now() { date +%s.%N; }

"$python" "$root/bench/mlserver/train_iris.py" "$work/model/iris" >/dev/null

# --- MLServer directly -------------------------------------------------------------
mkdir -p "$work/direct/iris"
ln -s "$work/model/iris/model.joblib" "$work/direct/iris/model.joblib"
echo '{"name":"iris","implementation":"mlserver_sklearn.SKLearnModel","parameters":{"uri":"./model.joblib"}}' > "$work/direct/iris/model-settings.json"
hp=$(bench_free_port); gp=$(bench_free_port); mp=$(bench_free_port)
# the same settings the agent gives its MLServer (server_settings in backend/mlserver.rs):
# "debug": false matters, MLServer's default (true) writes an access-log line per request
echo "{\"debug\":false,\"host\":\"127.0.0.1\",\"http_port\":$hp,\"grpc_port\":$gp,\"metrics_port\":$mp,\"parallel_workers\":0,\"load_models_at_startup\":false}" > "$work/direct/settings.json"
(cd "$work/direct" && exec nice -n "$NICE" "$mlserver" start "$work/direct" >"$work/direct.log" 2>&1) & pids+=($!)
direct="http://127.0.0.1:$hp"
wait_http "$direct/v2/health/ready"
t0=$(now); curl -sSf -X POST "$direct/v2/repository/models/iris/load" >/dev/null || { echo "direct MLServer load failed; log $work/direct.log" >&2; keep=1; exit 1; }; t1=$(now)
direct_load=$(echo "$t1 - $t0" | bc)
pin_server "${pids[0]}"

# --- coscale: up + one mlserver replica ----------------------------------------------
COSCALE_MLSERVER="$mlserver" nice -n "$NICE" "$bin" up --data-dir "$work/cs" --api-addr 127.0.0.1:0 --agent-addr 127.0.0.1:0 \
  --router-addr 127.0.0.1:0 --router-grpc-addr 127.0.0.1:0 --reconcile-seconds 0.2 >"$work/up.log" 2>&1 & pids+=($!)
wait_until "coscale up" 120 test -s "$work/cs/endpoints.json"
router=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["router_http"])' "$work/cs/endpoints.json")
printf 'apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata:\n  name: ml\nspec:\n  serverConfig: mlserver\n  replicas: 1\n' > "$work/server.yaml"
printf 'apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata:\n  name: iris\nspec:\n  storageUri: file://%s\n  requirements: [sklearn]\n' "$work/model/iris" > "$work/model.yaml"
"$bin" apply -f "$work/server.yaml" --data-dir "$work/cs" >/dev/null
# wait for the replica's MLServer to be up: the agent's child process whose working
# directory is its repository folder (the agent starts MLServer there)
server_ready() { "$bin" get servers ml -o json --data-dir "$work/cs" | grep -q '"ready_replicas": *1'; }
wait_until "server replica ml-0" 300 server_ready
agent_repo_of() { local a c; a=$(pgrep -P "${pids[1]}" -f ' agent ' | head -1) || return 1; for c in $(pgrep -P "$a" -f 'mlserver start'); do readlink "/proc/$c/cwd"; return 0; done; return 1; }
wait_until "the agent's MLServer process" 300 agent_repo_of
agent_repo=$(agent_repo_of)
wait_until "$agent_repo/settings.json" 300 test -s "$agent_repo/settings.json"
agent_http=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["http_port"])' "$agent_repo/settings.json")
wait_http "http://127.0.0.1:$agent_http/v2/health/ready"
t0=$(now); "$bin" apply -f "$work/model.yaml" --data-dir "$work/cs" >/dev/null
model_available() {
  local st; st=$("$bin" get models iris -o json --data-dir "$work/cs") || return 1
  if grep -q '"state": *"ModelFailed"' <<<"$st"; then
    echo "iris went ModelFailed: $(grep -o '"reason": *"[^"]*"' <<<"$st"); agent log: $work/cs/logs/ml-0.log" >&3
    keep=1; exit 1
  fi
  grep -q '"state": *"ModelAvailable"' <<<"$st"
}
wait_until "iris ModelAvailable" 600 model_available
t1=$(now); coscale_load=$(echo "$t1 - $t0" | bc)
pin_tree() { pin_server "$1" 2>/dev/null || true; for c in $(pgrep -P "$1" || true); do pin_tree "$c"; done; }
pin_tree "${pids[1]}"

cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body   = '{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}'
wrk.headers["Content-Type"] = "application/json"
LUA
curl -sSf -H 'Content-Type: application/json' -d '{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}' "$router/v2/models/iris/infer" >/dev/null \
  || { echo "inference through the router failed; logs in $work/cs/logs" >&2; keep=1; exit 1; }

# CPU accounting: utime+stime ticks of a process and all its descendants (threads included).
tree() { echo "$1"; for c in $(pgrep -P "$1" || true); do tree "$c"; done; }
# shellcheck disable=SC2046
ticks() { bench_cpu_ticks $(tree "$1"); }
hz=$(getconf CLK_TCK)
up_pid="${pids[1]}"
agent_pid=$(pgrep -P "$up_pid" -f ' agent ' | head -1)
agent_ml_pid=$(pgrep -P "$agent_pid" -f 'mlserver start' | head -1)
[ -n "$agent_ml_pid" ] || { echo "no MLServer process under the agent $agent_pid" >&2; keep=1; exit 1; }
# per request, in µs: the whole setup, and for coscale its parts
cpu_us() { awk -v d="$1" -v n="$2" -v hz="$hz" 'BEGIN { printf "%.0f", (n > 0 ? d * 1e6 / hz / n : 0) }'; }

bench() { # label url
  local b_direct b_up b_agent b_ml a_direct a_up a_agent a_ml n cpu parts
  b_direct=$(ticks "${pids[0]}"); b_up=$(ticks "$up_pid"); b_agent=$(ticks "$agent_pid"); b_ml=$(ticks "$agent_ml_pid")
  run_wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/post.lua" "$2" > "$work/wrk.out"
  a_direct=$(ticks "${pids[0]}"); a_up=$(ticks "$up_pid"); a_agent=$(ticks "$agent_pid"); a_ml=$(ticks "$agent_ml_pid")
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")
  n=$(awk '/requests in/ {print $1}' "$work/wrk.out")
  p50=$(awk '$1=="50%" {print $2}' "$work/wrk.out"); p99=$(awk '$1=="99%" {print $2}' "$work/wrk.out")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' "$work/wrk.out" | tr '\n' ' ')
  # `coscale up` ticks include its children (agent, agent's MLServer): subtract them
  local up_only=$(( (a_up - b_up) - (a_agent - b_agent) ))
  local agent_only=$(( (a_agent - b_agent) - (a_ml - b_ml) ))
  if [ "$1" = direct ]; then
    cpu=$(cpu_us $((a_direct - b_direct)) "$n"); parts="MLServer $cpu"
  else
    cpu=$(cpu_us $((a_up - b_up)) "$n")
    parts="router+control $(cpu_us "$up_only" "$n"), agent $(cpu_us "$agent_only" "$n"), MLServer $(cpu_us $((a_ml - b_ml)) "$n")"
  fi
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$rps" "$p50" "$p99" "$cpu" "$parts" "${errs:-0}"
  echo "$rps" >> "$work/rps.$1"
}
echo
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s, pinned=$PIN, iris LogisticRegression, 1 row per request"
echo "| path | req/s | p50 | p99 | CPU/req (µs) | CPU/req by process (µs) | errors |"
echo "|---|---|---|---|---|---|---|"
for _ in $(seq 1 "$ROUNDS"); do
  bench direct "$direct/v2/models/iris/infer"
  bench coscale "$router/v2/models/iris/infer"
done
d=$(awk '{s+=$1} END {print s/NR}' "$work/rps.direct"); c=$(awk '{s+=$1} END {print s/NR}' "$work/rps.coscale")
echo
printf 'mean req/s: direct %.0f, coscale %.0f, throughput loss %.1f %%\n' "$d" "$c" "$(echo "(1 - $c / $d) * 100" | bc -l)"
printf 'model load (first sklearn load in a fresh MLServer): direct load call %.3f s; coscale apply → ModelAvailable %.3f s\n' "$direct_load" "$coscale_load"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "raw file: $out" >&2
