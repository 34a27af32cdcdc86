#!/usr/bin/env bash
# Simulator fidelity check (issue 5, item 6): scenario C's step — Poisson arrivals at a base
# rate, 4× the base for one phase, back to the base — once on the live local platform
# (`coscale up` + `coscale load` on 127.0.0.1) and once in `coscale sim` with the same policy,
# the same rates and the server start-up and model load times measured in the live run.
# Writes bench/results/fidelity-<date>.md (the replica timelines side by side per 10 s,
# time to scale and p99 both ways) and fidelity-<date>.svg (both timelines overlaid).
#
# The live platform shares this machine's 2 cores with its load generator, so the rates are
# scaled down from scenario C's 83 → 333 req/s to a fraction of what one replica serves here
# (measured first), and the lag threshold is lowered so that the step still asks for more
# replicas; the simulator gets the very same rates and threshold.
#
#   bench/fidelity.sh                      # 3 phases of 60 s
#   FIDELITY_PHASE_S=90 FIDELITY_LAG=1 FIDELITY_BASE=0.1 bench/fidelity.sh
#
# FIDELITY_BASE: base rate as a fraction of one replica's measured capacity (the step is 4×).
# COSCALE_BIN: the binary (default target/release/coscale, built when stale).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PHASE="${FIDELITY_PHASE_S:-60}"
LAG="${FIDELITY_LAG:-1}"
BASE_FRACTION="${FIDELITY_BASE:-0.1}"
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
    "$BIN" up --data-dir "$DIR" --api-addr 127.0.0.1:0 --agent-addr 127.0.0.1:0 \
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

load() { # load RPS SECONDS SEED [CONCURRENCY]
    "$BIN" load mlp --data-dir "$DIR" --rps "$1" --duration "${2}s" --seed "$3" \
        --arrivals poisson --concurrency "${4:-4096}" -o json 2>/dev/null
}
start_platform probe
bench_log "measuring one replica's capacity (closed loop, 4 clients, 3 s)"
CAPACITY="$("$BIN" load mlp --data-dir "$DIR" --rps 100000 --duration 3s --concurrency 4 -o json 2>/dev/null |
    jq '.achieved_rps')"
BASE="$(awk -v c="$CAPACITY" -v f="$BASE_FRACTION" 'BEGIN { printf "%.1f", c * f }')"
STEP="$(awk -v b="$BASE" 'BEGIN { printf "%.1f", 4 * b }')"
bench_log "capacity $CAPACITY req/s; base $BASE req/s, step $STEP req/s, $PHASE s per phase"
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
load "$BASE" "$PHASE" 11 >"$BENCH_TMP/phase1.json"
T_STEP="$(date +%s%3N)"
bench_log "phase 2/3: $STEP req/s"
load "$STEP" "$PHASE" 12 >"$BENCH_TMP/phase2.json"
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
bench_log "measured: server start-up ${STARTUP} s, model load ${LOAD_S} s; base p50 $P50 ms, p99 $P99 ms"

# --- the simulator -------------------------------------------------------------------------
# Service time: Gamma with the base phase's p50 and p99 (its CV fitted to their ratio), slots
# from Little's law on the measured capacity (capacity × mean service time).
read -r SERVICE_MS SERVICE_CV SLOTS < <(python3 - "$P50" "$P99" "$CAPACITY" <<'EOF'
import random, sys
p50, p99, cap = map(float, sys.argv[1:4])
def ratio(cv, n=20000):
    rnd = random.Random(7); k = 1 / (cv * cv)
    xs = sorted(rnd.gammavariate(k, 1 / k) for _ in range(n))
    return xs[int(0.99 * n)] / xs[n // 2], xs[n // 2]
target = max(p99 / max(p50, 1e-6), 1.5)
lo, hi = 0.2, 8.0
for _ in range(25):
    mid = (lo + hi) / 2
    if ratio(mid)[0] < target: lo = mid
    else: hi = mid
cv = (lo + hi) / 2
median_of_unit = ratio(cv)[1]
mean_ms = p50 / median_of_unit
print(f"{mean_ms:.3f} {cv:.3f} {max(1, round(cap * mean_ms / 1000))}")
EOF
)
DURATION=$((3 * PHASE))
scenario() { # scenario CHART_POINTS
    cat <<EOF
name: fidelity-c-step
seed: 1
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
scenario "$DURATION" >"$BENCH_TMP/sim-timeline.yaml"
scenario 3 >"$BENCH_TMP/sim-phases.yaml"
bench_log "simulating (service ${SERVICE_MS} ms, CV ${SERVICE_CV}, ${SLOTS} slots)"
"$BIN" sim -q -f "$BENCH_TMP/sim-timeline.yaml" --out "$BENCH_TMP/sim-timeline" >/dev/null
"$BIN" sim -q -f "$BENCH_TMP/sim-phases.yaml" --out "$BENCH_TMP/sim-phases" >/dev/null

# --- the comparison ----------------------------------------------------------------------
CMD="bench/fidelity.sh (FIDELITY_PHASE_S=$PHASE FIDELITY_LAG=$LAG FIDELITY_BASE=$BASE_FRACTION)"
{
    bench_header "Simulator fidelity: scenario C's step, live vs simulated" "$CMD"
    printf -- '- load average at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf -- '- one replica'"'"'s capacity: %s req/s; base %s req/s, step to %s req/s, %s s per phase\n' \
        "$(printf '%.0f' "$CAPACITY")" "$BASE" "$STEP" "$PHASE"
    printf -- '- policy: coscale-native, proportional mode, lag threshold %s (live: `coscale up --autoscaling-mode proportional --model-inference-lag-threshold %s`)\n' "$LAG" "$LAG"
    printf -- '- measured on the live run: server start-up %s s, model load %s s; base-phase latency p50 %s ms, p99 %s ms\n' \
        "$STARTUP" "$LOAD_S" "$P50" "$P99"
    printf -- '- simulator model: service time Gamma(mean %s ms, CV %s), %s slots\n\n' "$SERVICE_MS" "$SERVICE_CV" "$SLOTS"
    python3 - "$BENCH_TMP" "$PHASE" "$T0" "$T_STEP" "$SVG" <<'EOF'
import csv, json, math, sys
d, phase, t0, t_step, svg_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
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
tl = tts(live, lambda r: (r[0] - shift, r[2]), want) if want > 1 else None
ts = tts(sim, lambda r: (r["t_s"], r["ready_model_replicas"]), want) if want > 1 else None
phases = [json.load(open(f"{d}/phase{i}.json")) for i in (1, 2, 3)]
sim_ph = list(csv.DictReader(open(f"{d}/sim-phases/coscale-native.csv")))
summary = json.load(open(f"{d}/sim-timeline/summary.json"))["policies"][0]
print("\n## Time to scale and p99\n")
print("| measure | live | simulated | sim ÷ live |")
print("|---|---:|---:|---:|")
fmt = lambda x: "—" if x is None else f"{x:.1f}"
ratio = lambda a, b: "—" if a in (None, 0) or b is None else f"{b / a:.2f}"
print(f"| peak model replicas in the 4× phase | {peak_live:.0f} | {peak_sim:.0f} | |")
print(f"| time to scale: step → {want:.0f} ready model replicas (s) | {fmt(tl)} | {fmt(ts)} | {ratio(tl, ts)} |")
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
