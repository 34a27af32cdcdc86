#!/usr/bin/env bash
# Simulator fidelity check (issue 5, item 6): scenario C's step — Poisson arrivals at a base
# rate, 4× the base for one phase, back to the base — once on the live local platform
# (`coscale up` + `coscale load` on 127.0.0.1) and once in `coscale sim` with the same policy,
# the same rates and the server start-up and model load times measured in the live run.
# Writes bench/results/fidelity-<date>.md (the replica timelines side by side per 10 s,
# time to scale and p99 both ways) and fidelity-<date>.svg (both timelines overlaid).
#
# What the lag counts is the time a request spends inside the agent (queued for an inference
# slot or running), so that is what the simulator is calibrated with: the agent's own
# counters give the mean service time of a batch request run one at a time, and each replica
# runs FIDELITY_PARALLELISM inferences at a time (the agent's `--inference-parallelism`,
# the simulator's `slots`). Requests carry FIDELITY_ROWS rows, so that inference, not the
# HTTP hops, is most of a request's time. The base rate is FIDELITY_BASE of one replica's
# capacity (slots / service time) and the step is 4× that: one replica is then ~80 % busy
# and queues, which is what the lag threshold (FIDELITY_LAG per replica) reacts to. The
# rates stay below one core of inference on this 2-core machine, so replicas do not slow
# each other down much (the simulator does not model shared cores).
#
#   bench/fidelity.sh                      # 3 phases of 60 s
#   FIDELITY_PHASE_S=90 FIDELITY_LAG=1.5 FIDELITY_BASE=0.2 FIDELITY_ROWS=256 bench/fidelity.sh
#
# COSCALE_BIN: the binary (default target/release/coscale, built when stale).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PHASE="${FIDELITY_PHASE_S:-60}"
LAG="${FIDELITY_LAG:-1.5}"
BASE_FRACTION="${FIDELITY_BASE:-0.2}"
ROWS="${FIDELITY_ROWS:-256}"
PARALLELISM="${FIDELITY_PARALLELISM:-1}"
MAX_REPLICAS=8
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$BENCH_ROOT/bench/results/fidelity-$STAMP.md"
SVG="$BENCH_ROOT/bench/results/fidelity-$STAMP.svg"

bench_init
bench_need jq jq curl curl
bench_build
LOAD_AT_START="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- the live platform -------------------------------------------------------------------
# start_platform NAME: coscale up in $BENCH_TMP/NAME with the step's Server and Model, until
# the model is available; sets DIR, API and TOKEN.
start_platform() {
    DIR="$BENCH_TMP/$1"
    mkdir -p "$DIR"
    bench_log "starting coscale up (proportional mode, lag threshold $LAG)"
    COSCALE_INFERENCE_PARALLELISM="$PARALLELISM" "$BIN" up --data-dir "$DIR" --api-addr 127.0.0.1:0 --agent-addr 127.0.0.1:0 \
        --router-addr 127.0.0.1:0 --router-grpc-addr 127.0.0.1:0 --reconcile-seconds 0.25 \
        --autoscaling-mode proportional --model-inference-lag-threshold "$LAG" \
        >"$DIR.up.log" 2>&1 &
    bench_track $!
    bench_wait_file "$DIR/endpoints.json" 30
    bench_wait_http "$(jq -r .router_http "$DIR/endpoints.json")/v2/health/live" 30 $!
    API="$(jq -r .api "$DIR/endpoints.json")"
    TOKEN="$(cat "$DIR/token")"
    "$BIN" apply -f "$BENCH_TMP/step.yaml" --data-dir "$DIR" >&2
    bench_wait_models "$DIR" 1 60 || bench_die "the model did not become available"
}

cat >"$BENCH_TMP/step.yaml" <<EOF
apiVersion: mlops.seldon.io/v1alpha1
kind: Server
metadata:
  name: pool
spec:
  serverConfig: builtin
  replicas: 1
  minReplicas: 1
  maxReplicas: $MAX_REPLICAS
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata:
  name: mlp
spec:
  storageUri: file://$BENCH_ROOT/examples/models/iris-mlp
  requirements: [onnx]
  memory: 8Mi
  replicas: 1
  minReplicas: 1
  maxReplicas: $MAX_REPLICAS
EOF

# One request: ROWS iris rows for the MLP.
python3 - "$ROWS" >"$BENCH_TMP/body.json" <<'EOF'
import json, sys
rows = int(sys.argv[1])
flowers = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
data = [x for i in range(rows) for x in flowers[i % 3]]
print(json.dumps({"inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": data}]}))
EOF
load() { # load RPS SECONDS SEED [CONCURRENCY]
    "$BIN" load mlp --data-dir "$DIR" --rps "$1" --duration "${2}s" --seed "$3" \
        --arrivals poisson --concurrency "${4:-4096}" -d "@$BENCH_TMP/body.json" -o json 2>/dev/null
}
# agent_counters: "<requests> <seconds>" summed over the model's replicas, from each agent's
# /metrics (seldon_model_infer_total and seldon_model_infer_seconds_total of model mlp).
agent_counters() {
    local urls u n=0 secs=0 text a b
    urls="$("$BIN" get servers pool -o json --data-dir "$DIR" | jq -r '(if type == "array" then .[] else . end) | .replicas[]? | .http // empty')"
    for u in $urls; do
        text="$(curl -fsS --max-time 2 "http://${u#http://}/metrics")" || continue
        read -r a b < <(awk '/^seldon_model_infer_total\{.*model="mlp"/ { n += $NF }
            /^seldon_model_infer_seconds_total\{.*model="mlp"/ { s += $NF }
            END { printf "%d %.9f\n", n, s }' <<<"$text")
        n=$((n + a)); secs="$(awk -v x="$secs" -v y="$b" 'BEGIN { printf "%.9f", x + y }')"
    done
    echo "$n $secs"
}
start_platform probe
bench_log "measuring the service time of a $ROWS-row request, one at a time (3 s)"
read -r N0 S0 < <(agent_counters)
PROBE="$("$BIN" load mlp --data-dir "$DIR" --rps 100000 --duration 3s --concurrency 1 \
    -d "@$BENCH_TMP/body.json" -o json 2>/dev/null)"
read -r N1 S1 < <(agent_counters)
(( N1 > N0 )) || bench_die "the agent counted no requests during the probe"
SERVICE_MS="$(awk -v n=$((N1 - N0)) -v a="$S0" -v b="$S1" 'BEGIN { printf "%.3f", 1000 * (b - a) / n }')"
PROBE_MS="$SERVICE_MS"
CAPACITY="$(awk -v s="$SERVICE_MS" -v k="$PARALLELISM" 'BEGIN { printf "%.1f", 1000 * k / s }')"
PROBE_P50="$(jq '.p50_ms' <<<"$PROBE")"
PROBE_P99="$(jq '.p99_ms' <<<"$PROBE")"
BASE="$(awk -v c="$CAPACITY" -v f="$BASE_FRACTION" 'BEGIN { printf "%.1f", c * f }')"
STEP="$(awk -v b="$BASE" 'BEGIN { printf "%.1f", 4 * b }')"
bench_log "service time $SERVICE_MS ms in the agent (client p50 $PROBE_P50 ms, p99 $PROBE_P99 ms); capacity $CAPACITY req/s per replica; base $BASE req/s, step $STEP req/s, $PHASE s per phase"
# The probe's lag scales the model up: the step starts on a fresh platform at 1 replica.
bench_stop
start_platform step

# Replica timeline: one row a second from the control plane's API (t, model desired, model
# available, server desired, server ready).
sample() {
    local t0="$1" m s
    while :; do
        m="$(curl -fsS --max-time 2 -H "Authorization: Bearer $TOKEN" "$API/api/v1/models" || echo '[]')"
        s="$(curl -fsS --max-time 2 -H "Authorization: Bearer $TOKEN" "$API/api/v1/servers" || echo '[]')"
        jq -nr --argjson m "$m" --argjson s "$s" --argjson t0 "$t0" --argjson now "$(date +%s%3N)" \
            '[($now - $t0) / 1000, ($m[0].desired_replicas // 0), ($m[0].available_replicas // 0),
              ($s[0].desired_replicas // 0), ($s[0].ready_replicas // 0)] | @csv' || true
        sleep 1
    done
}
T0="$(date +%s%3N)"
sample "$T0" >"$BENCH_TMP/live.csv" &
bench_track $!
bench_log "phase 1/3: $BASE req/s"
read -r C0 T0S < <(agent_counters)
load "$BASE" "$PHASE" 11 >"$BENCH_TMP/phase1.json"
read -r C1 T1S < <(agent_counters)
T_STEP="$(date +%s%3N)"
bench_log "phase 2/3: $STEP req/s"
load "$STEP" "$PHASE" 12 >"$BENCH_TMP/phase2.json"
read -r C2 T2S < <(agent_counters)
bench_log "phase 3/3: $BASE req/s"
load "$BASE" "$PHASE" 13 >"$BENCH_TMP/phase3.json"
sleep 1
"$BIN" describe model mlp --data-dir "$DIR" -o json >"$BENCH_TMP/model.json"
"$BIN" describe server pool --data-dir "$DIR" -o json >"$BENCH_TMP/server.json"
bench_stop

# Measured delays, from the control plane's events: server start-up = a server scale-up
# until each replica it added connects; model load = a model replica scheduled on a server
# replica until it is loaded there. Latency at the base rate gives the service time.
read -r STARTUP LOAD_S < <(python3 - "$BENCH_TMP" <<'EOF'
import json, re, sys
d = sys.argv[1]
srv = json.load(open(f"{d}/server.json")); mdl = json.load(open(f"{d}/model.json"))
def evs(o): return o.get("events", [])
ups, connected = [], {}
for e in evs(srv):
    if e["reason"] == "ScaledUp":
        ups.append(e["unix_millis"])
    m = re.match(r"replica (\d+) connected", e["message"])
    if e["reason"] == "ReplicaConnected" and m and int(m.group(1)) > 0:
        connected.setdefault(int(m.group(1)), e["unix_millis"])
starts = []
for r, t in connected.items():
    before = [u for u in ups if u <= t]
    if before: starts.append((t - max(before)) / 1000)
loads = []
for e in evs(mdl):
    m = re.search(r"available on pool-(\d+)", e["message"])
    if e["reason"] == "Loaded" and m and int(m.group(1)) in connected:
        loads.append(max(0.0, (e["unix_millis"] - connected[int(m.group(1))]) / 1000))
mean = lambda xs, d: sum(xs) / len(xs) if xs else d
print(f"{mean(starts, 0.5):.3f} {mean(loads, 0.1):.3f}")
EOF
)
P50="$(jq '.p50_ms' "$BENCH_TMP/phase1.json")"
P99="$(jq '.p99_ms' "$BENCH_TMP/phase1.json")"
# Time in the agent (queue + inference) per request, live, in the base and the 4× phase
# (replicas only scale down later, so the counters of both phases are complete).
IN_AGENT_BASE="$(awk -v n=$((C1 - C0)) -v a="$T0S" -v b="$T1S" 'BEGIN { printf "%.3f", (n > 0 ? 1000 * (b - a) / n : 0) }')"
IN_AGENT_STEP="$(awk -v n=$((C2 - C1)) -v a="$T1S" -v b="$T2S" 'BEGIN { printf "%.3f", (n > 0 ? 1000 * (b - a) / n : 0) }')"
bench_log "measured: server start-up ${STARTUP} s, model load ${LOAD_S} s; base p50 $P50 ms, p99 $P99 ms; in the agent: base $IN_AGENT_BASE ms, 4× $IN_AGENT_STEP ms"

# --- the simulator -------------------------------------------------------------------------
# Service time S: Gamma. Its CV is fitted to the spread of the probe's client latencies (one
# request at a time, so no queueing) above their floor, the client's and the hops' share
# (client p50 − agent mean). Its mean comes from the base phase, where requests arrive as
# in the step (Poisson, spaced out, caches cooler than in the back-to-back probe): the
# agent's mean time W there is S plus the M/G/1 queueing delay (Pollaczek–Khinchine)
# W = S + λ S² (1 + CV²) / (2 (1 − λ S)) with one slot, which is solved for S. With more
# than one slot the probe's S is used.
read -r SERVICE_CV SERVICE_MS < <(python3 - "$PROBE_P50" "$PROBE_P99" "$PROBE_MS" "$IN_AGENT_BASE" "$BASE" "$PARALLELISM" <<'EOF'
import random, sys
p50, p99, probe, w, rate, slots = map(float, sys.argv[1:7])
floor = max(0.0, p50 - probe)
target = max((p99 - floor) / max(p50 - floor, 1e-6), 1.0)
def ratio(cv, n=20000):
    rnd = random.Random(7); k = 1 / (cv * cv)
    xs = sorted(rnd.gammavariate(k, 1 / k) for _ in range(n))
    return xs[int(0.99 * n)] / xs[n // 2]
lo, hi = 0.02, 8.0
for _ in range(25):
    mid = (lo + hi) / 2
    if ratio(mid) < target: lo = mid
    else: hi = mid
cv = (lo + hi) / 2
mean = probe
if slots == 1 and w > 0:
    lam = rate / 1000.0  # per ms
    f = lambda s: s + lam * s * s * (1 + cv * cv) / (2 * (1 - lam * s)) - w
    a, b = 1e-6, min(w, 0.999 / lam)
    for _ in range(60):
        m = (a + b) / 2
        if f(m) < 0: a = m
        else: b = m
    mean = (a + b) / 2
print(f"{cv:.3f} {mean:.3f}")
EOF
)
SLOTS="$PARALLELISM"
DURATION=$((3 * PHASE))
scenario() { # scenario CHART_POINTS
    cat <<EOF
name: fidelity-c-step
seed: ${2:-1}
duration_s: $DURATION
slo_ms: 250
timeout_ms: 5000
chart_points: $1
models:
  - {name: mlp, service_ms: $SERVICE_MS, service_cv: $SERVICE_CV, slots: $SLOTS, memory: 8Mi,
     load_s: $LOAD_S, min_replicas: 1, max_replicas: $MAX_REPLICAS, replicas: 1}
servers:
  - {name: pool, memory: 1Gi, startup_s: $STARTUP, min_replicas: 1, max_replicas: $MAX_REPLICAS, replicas: 1}
traffic:
  - {kind: poisson, rate: $BASE, shape: {step: {at_s: $PHASE, factor: 4, until_s: $((2 * PHASE))}}}
policies:
  - {name: coscale-native, coscale_native: {env: {COSCALE_AUTOSCALING_MODE: proportional,
     SELDON_MODEL_INFERENCE_LAG_THRESHOLD: "$LAG"}}}
EOF
}
SIM_SEEDS=5
for seed in $(seq 2 "$SIM_SEEDS"); do
    scenario "$DURATION" "$seed" >"$BENCH_TMP/sim-seed$seed.yaml"
    "$BIN" sim -q -f "$BENCH_TMP/sim-seed$seed.yaml" --out "$BENCH_TMP/sim-seed$seed" >/dev/null
done
scenario "$DURATION" >"$BENCH_TMP/sim-timeline.yaml"
scenario 3 >"$BENCH_TMP/sim-phases.yaml"
bench_log "simulating (service ${SERVICE_MS} ms, CV ${SERVICE_CV}, ${SLOTS} slots)"
"$BIN" sim -q -f "$BENCH_TMP/sim-timeline.yaml" --out "$BENCH_TMP/sim-timeline" >/dev/null
"$BIN" sim -q -f "$BENCH_TMP/sim-phases.yaml" --out "$BENCH_TMP/sim-phases" >/dev/null

# --- the comparison ----------------------------------------------------------------------
CMD="bench/fidelity.sh (FIDELITY_PHASE_S=$PHASE FIDELITY_LAG=$LAG FIDELITY_BASE=$BASE_FRACTION FIDELITY_ROWS=$ROWS FIDELITY_PARALLELISM=$PARALLELISM)"
{
    bench_header "Simulator fidelity: scenario C's step, live vs simulated" "$CMD"
    printf -- '- load average at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf -- '- requests: %s iris rows each; one replica runs %s at a time (`COSCALE_INFERENCE_PARALLELISM=%s`)\n' "$ROWS" "$PARALLELISM" "$PARALLELISM"
    printf -- '- service time in the agent, one request at a time: %s ms (client latency p50 %s ms, p99 %s ms); one replica'"'"'s capacity %s req/s\n' \
        "$PROBE_MS" "$PROBE_P50" "$PROBE_P99" "$(printf '%.0f' "$CAPACITY")"
    printf -- '- base %s req/s (%s of capacity), step to %s req/s, %s s per phase\n' "$BASE" "$BASE_FRACTION" "$STEP" "$PHASE"
    printf -- '- policy: coscale-native, proportional mode, lag threshold %s (live: `coscale up --autoscaling-mode proportional --model-inference-lag-threshold %s`)\n' "$LAG" "$LAG"
    printf -- '- measured on the live run: server start-up %s s, model load %s s; base-phase latency p50 %s ms, p99 %s ms\n' \
        "$STARTUP" "$LOAD_S" "$P50" "$P99"
    printf -- '- live time in the agent per request (queue + inference): base phase %s ms, 4× phase %s ms\n' "$IN_AGENT_BASE" "$IN_AGENT_STEP"
    printf -- '- simulator model: service time Gamma(mean %s ms — solved from the base phase'"'"'s time in the agent with the M/G/1 formula —, CV %s), %s slots\n\n' "$SERVICE_MS" "$SERVICE_CV" "$SLOTS"
    python3 - "$BENCH_TMP" "$PHASE" "$T0" "$T_STEP" "$SVG" "$SIM_SEEDS" <<'EOF'
import csv, json, math, sys
d, phase, t0, t_step, svg_path, n_seeds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
dur = 3 * phase
live = [list(map(float, r)) for r in csv.reader(open(f"{d}/live.csv")) if r]
sim = [dict((k, float(v)) for k, v in r.items()) for r in csv.DictReader(open(f"{d}/sim-timeline/coscale-native.csv"))]
shift = (t_step - t0) / 1000 - phase  # the live step started this late against the plan
def live_at(t):  # last live sample at or before plan time t
    rows = [r for r in live if r[0] - shift <= t]
    return rows[-1] if rows else live[0]
def sim_at(t):
    rows = [r for r in sim if r["t_s"] <= t]
    return rows[-1] if rows else {"model_replicas": 1, "ready_model_replicas": 1, "server_replicas": 1}
print("## Replica timelines (every 10 s; model desired/ready, server replicas)\n")
print("| t (s) | phase | live model desired | sim model placed | live model ready | sim model ready | live servers | sim servers | |Δ model| |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
worst, worst_minute = 0, 0
for t in range(10, dur + 1, 10):
    lv, sv = live_at(t), sim_at(t)
    ph = "base" if t <= phase else ("4×" if t <= 2 * phase else "base")
    dm = abs(lv[1] - sv["model_replicas"])
    worst = max(worst, dm)
    if t % 60 == 0: worst_minute = max(worst_minute, dm)
    print(f"| {t} | {ph} | {lv[1]:.0f} | {sv['model_replicas']:.0f} | {lv[2]:.0f} | {sv['ready_model_replicas']:.0f} | {lv[3]:.0f} | {sv['server_replicas']:.0f} | {dm:.0f} |")
def tts(rows, t_of, want):  # seconds after the step until ready model replicas reach `want`
    for r in rows:
        t, ready = t_of(r)
        if t >= phase and ready >= want: return t - phase
    return None
peak_live = max((r[1] for r in live if phase <= r[0] - shift <= 2 * phase), default=1)
peak_sim = max((r["model_replicas"] for r in sim if phase <= r["t_s"] <= 2 * phase), default=1)
want = min(peak_live, peak_sim)
# Live: from the control plane's events (ms): the step until the Loaded event that brought
# the ready replicas from 1 to `want`. Simulated: the simulator samples replicas once a
# second, so a replica that became ready during second k shows from row k on; the time is
# taken at the middle of that second, per seed, and the median over the seeds is compared.
mevents = json.load(open(f"{d}/model.json")).get("events", [])
loads_after = sorted(e["unix_millis"] for e in mevents if e["reason"] == "Loaded" and e["unix_millis"] >= t_step)
tl = (loads_after[int(want) - 2] - t_step) / 1000 if want > 1 and len(loads_after) >= want - 1 else None
def sim_tts(rows):
    t = tts(rows, lambda r: (r["t_s"], r["ready_model_replicas"]), want) if want > 1 else None
    return None if t is None else max(0.0, t - 0.5)
seeds = [sim] + [[dict((k, float(v)) for k, v in r.items()) for r in csv.DictReader(open(f"{d}/sim-seed{i}/coscale-native.csv"))]
                 for i in range(2, n_seeds + 1)]
per_seed = [sim_tts(rows) for rows in seeds]
found = sorted(t for t in per_seed if t is not None)
ts = found[len(found) // 2] if found else None
phases = [json.load(open(f"{d}/phase{i}.json")) for i in (1, 2, 3)]
sim_ph = list(csv.DictReader(open(f"{d}/sim-phases/coscale-native.csv")))
summary = json.load(open(f"{d}/sim-timeline/summary.json"))["policies"][0]
print("\n## Time to scale and p99\n")
print("| measure | live | simulated | sim ÷ live |")
print("|---|---:|---:|---:|")
fmt = lambda x: "—" if x is None else f"{x:.1f}"
ratio = lambda a, b: "—" if a in (None, 0) or b is None else f"{b / a:.2f}"
print(f"| peak model replicas in the 4× phase | {peak_live:.0f} | {peak_sim:.0f} | |")
print(f"| time to scale: step → {want:.0f} ready model replicas (s; sim: median of {n_seeds} seeds) | {fmt(tl)} | {fmt(ts)} | {ratio(tl, ts)} |")
print(f"| time to scale per simulated seed (s) | | {', '.join(fmt(t) for t in per_seed)} | |")
for i, name in enumerate(["base", "4×", "base again"]):
    lp, sp = phases[i]["p99_ms"], float(sim_ph[i]["p99_ms"]) if i < len(sim_ph) else None
    print(f"| p99, {name} phase (ms) | {lp:.1f} | {fmt(sp)} | {ratio(lp, sp)} |")
print(f"| requests failed / dropped+timed out | {sum(p['failed'] for p in phases)} | {summary['dropped'] + summary['timed_out']} | |")
ok_counts = worst_minute <= 1
ok_tts = tl is not None and ts is not None and abs(ts - tl) <= 0.2 * max(tl, 1e-9)
print("\n## Against the targets\n")
print(f"- replica counts within ±1 at every minute: **{'met' if ok_counts else 'not met'}** "
      f"(largest model-replica gap at a whole minute {worst_minute:.0f}, at any 10 s point {worst:.0f})")
print(f"- time to scale within 20 %: **{'met' if ok_tts else 'not met'}** (live {fmt(tl)} s, simulated {fmt(ts)} s)")
print("\n## Live scale decisions (the control plane's events, seconds from the step)\n")
for kind, path in (("model", "model.json"), ("server", "server.json")):
    for e in json.load(open(f"{d}/{path}")).get("events", []):
        if e["reason"] in ("ScaledUp", "ScaledDown"):
            print(f"- {kind}, {(e['unix_millis'] - t_step) / 1000:+.1f} s: {e['message']}")
# SVG: model replicas (desired/placed) and server replicas over plan time, both runs.
W, H, L, R, T, B = 720, 300, 50, 20, 30, 40
ymax = max([r[1] for r in live] + [r[3] for r in live] + [r["model_replicas"] for r in sim] + [r["server_replicas"] for r in sim] + [2])
X = lambda t: L + (W - L - R) * max(0, min(t, dur)) / dur
Y = lambda v: H - B - (H - T - B) * v / ymax
def line(pts, color, dash=""):
    p = " ".join(f"{X(t):.1f},{Y(v):.1f}" for t, v in pts)
    return f'<polyline fill="none" stroke="{color}" stroke-width="2" {dash} points="{p}"/>'
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect x="{X(phase):.1f}" y="{T}" width="{X(2 * phase) - X(phase):.1f}" height="{H - T - B}" fill="#f3f3f3"/>',
       f'<text x="{L}" y="18">replicas: live (solid) vs simulated (dashed); grey = 4× phase</text>']
for v in range(0, int(ymax) + 1):
    out.append(f'<text x="{L - 8}" y="{Y(v) + 4:.1f}" text-anchor="end">{v}</text>')
for t in range(0, dur + 1, 30):
    out.append(f'<text x="{X(t):.1f}" y="{H - B + 16}" text-anchor="middle">{t}s</text>')
out.append(line([(r[0] - shift, r[1]) for r in live], "#1f77b4"))
out.append(line([(r["t_s"], r["model_replicas"]) for r in sim], "#1f77b4", 'stroke-dasharray="6,4"'))
out.append(line([(r[0] - shift, r[3]) for r in live], "#d62728"))
out.append(line([(r["t_s"], r["server_replicas"]) for r in sim], "#d62728", 'stroke-dasharray="6,4"'))
out.append(f'<text x="{W - 200}" y="{H - 8}" fill="#1f77b4">model replicas</text><text x="{W - 90}" y="{H - 8}" fill="#d62728">server replicas</text>')
out.append("</svg>")
open(svg_path, "w").write("\n".join(out) + "\n")
EOF
    printf '\n![timelines](%s)\n' "$(basename "$SVG")"
} >"$OUT"
bench_log "wrote $OUT and $SVG (load average at start: $LOAD_AT_START)"
cat "$OUT"
