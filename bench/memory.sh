#!/usr/bin/env bash
# Memory benchmark: resident set size (VmRSS, and the peak VmHWM) of
#   - `coscale runtime` alone, with no models and with the two example models (baseline);
#   - an idle server replica process (agent + built-in runtime) of a 1-replica Server, with no
#     models, with iris + iris-mlp loaded, and after a short burst of requests through the router;
#   - the `coscale up` process (control plane + router) with 0 and with 1,000 Models, in two variants:
#       unplaceable  1,000 Models requiring a capability no server has (all ScheduleFailed);
#       placed       1,000 Models (the tiny iris model, memory 1Ki) loaded on a 2-replica Server.
#
# Usage: bench/memory.sh [--out FILE] [--models N] [--variants "unplaceable placed"]
#                        [--settle SECONDS] [--place-timeout SECONDS]
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CMD="bench/memory.sh"
(($# == 0)) || CMD+="$(printf ' %q' "$@")"
N_MODELS=1000
VARIANTS="unplaceable placed"
SETTLE=3
PLACE_TIMEOUT=600
OUT="$BENCH_ROOT/bench/results/memory-$(date +%Y%m%d-%H%M%S).md"
while (($#)); do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --models) N_MODELS="$2"; shift 2 ;;
        --variants) VARIANTS="$2"; shift 2 ;;
        --settle) SETTLE="$2"; shift 2 ;;
        --place-timeout) PLACE_TIMEOUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) bench_die "unknown argument $1 (see --help)" ;;
    esac
done

bench_init
bench_need wrk wrk curl curl jq jq
bench_build
ROWS="$BENCH_TMP/rows.tsv"
: >"$ROWS"
NOTES="$BENCH_TMP/notes.txt"
: >"$NOTES"

# row WHAT PROCESS PID TARGET_MIB: records VmRSS, VmHWM and the anonymous and file-backed parts
# of VmRSS (RssAnon, RssFile) of PID after SETTLE seconds.
row() {
    sleep "$SETTLE"
    local rss hwm anon file
    rss="$(bench_status_kib "$3" VmRSS)"
    hwm="$(bench_status_kib "$3" VmHWM)"
    anon="$(bench_status_kib "$3" RssAnon)"
    file="$(bench_status_kib "$3" RssFile)"
    bench_log "$1 / $2 (pid $3): VmRSS $(bench_mib "$rss") MiB (anon $(bench_mib "$anon"), file $(bench_mib "$file")), VmHWM $(bench_mib "$hwm") MiB"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$rss" "$hwm" "${4:-}" "$anon" "$file" >>"$ROWS"
}

model_doc() { # name requirement storage-path
    cat <<EOF
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata:
  name: $1
spec:
  storageUri: file://$BENCH_ROOT/examples/models/$3
  requirements: [$2]
  memory: 1Ki
  replicas: 1
EOF
}
server_doc() { # name replicas
    cat <<EOF
apiVersion: mlops.seldon.io/v1alpha1
kind: Server
metadata:
  name: $1
spec:
  serverConfig: builtin
  replicas: $2
EOF
}

# Baseline: the runtime on its own.
bench_runtime "$(bench_free_port)" "$(bench_free_port)"
row "runtime alone, no models" "coscale runtime" "$RT_PID"
bench_runtime "$(bench_free_port)" "$(bench_free_port)" iris iris-mlp
row "runtime alone, iris + iris-mlp" "coscale runtime" "$RT_PID"
bench_stop

# (a) an idle server replica.
server_doc bench 1 >"$BENCH_TMP/server1.yaml"
{ model_doc iris onnx iris; model_doc iris-mlp onnx iris-mlp; } >"$BENCH_TMP/two-models.yaml"
bench_up "$BENCH_TMP/a" "$BENCH_TMP/server1.yaml"
bench_wait_servers "$BENCH_TMP/a" 60
row "server replica, idle, no models" "agent" "${AGENT_PIDS[0]}" 30
row "control plane + router, 1 server, 0 models" "coscale up" "$UP_PID"
"$BIN" apply --data-dir "$BENCH_TMP/a" -f "$BENCH_TMP/two-models.yaml" >/dev/null
bench_wait_models "$BENCH_TMP/a" 2 60 || bench_die "the two example models did not become available"
row "server replica, idle, iris + iris-mlp loaded" "agent" "${AGENT_PIDS[0]}"
for m in iris iris-mlp; do
    wrk -t 2 -c 8 -d 2s --timeout 5s -s "$BENCH_ROOT/bench/infer.lua" "$ROUTER_HTTP/v2/models/$m/infer" >/dev/null
done
row "server replica, idle again after 2 × 2 s of wrk -c 8" "agent" "${AGENT_PIDS[0]}"
bench_stop

# (b) the control plane with N_MODELS Models.
for variant in $VARIANTS; do
    dir="$BENCH_TMP/b-$variant"
    server_doc bench 2 >"$BENCH_TMP/server2.yaml"
    case "$variant" in
        unplaceable) req=gpu-that-no-server-has; want=ScheduleFailed ;;
        placed) req=onnx; want=ModelAvailable ;;
        *) bench_die "unknown variant $variant (unplaceable, placed)" ;;
    esac
    for ((i = 0; i < N_MODELS; i++)); do model_doc "$(printf 'm%04d' "$i")" "$req" iris; done >"$BENCH_TMP/models-$variant.yaml"
    bench_up "$dir" "$BENCH_TMP/server2.yaml"
    bench_wait_servers "$dir" 60
    row "control plane + router, 2 server replicas, 0 models ($variant run)" "coscale up" "$UP_PID"
    start=$SECONDS
    "$BIN" apply --data-dir "$dir" -f "$BENCH_TMP/models-$variant.yaml" >/dev/null
    if bench_wait_models "$dir" "$N_MODELS" "$PLACE_TIMEOUT" "$want"; then
        echo "$variant: $N_MODELS models applied in one request reached $want in $((SECONDS - start)) s." >>"$NOTES"
        status="all $want"
    else
        echo "$variant: NOT all $N_MODELS models reached $want within $PLACE_TIMEOUT s (see the log above)." >>"$NOTES"
        status="NOT all $want"
    fi
    row "control plane + router, $N_MODELS Models ($variant: $status)" "coscale up" "$UP_PID" 100
    t0="$(bench_cpu_ticks "$UP_PID")"
    sleep 10
    t1="$(bench_cpu_ticks "$UP_PID")"
    echo "$variant: \`coscale up\` used $(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", 100 * t / hz / 10 }') % of one core while idle over 10 s with $N_MODELS Models." >>"$NOTES"
    if [[ "$variant" == placed ]]; then
        for p in "${AGENT_PIDS[@]}"; do
            n="$("$BIN" get servers --data-dir "$dir" -o json | jq --argjson p "$p" '[.[].replicas[] | select(.pid == $p) | .loaded_models | length] | add')"
            row "server replica holding $n of the $N_MODELS Models" "agent" "$p"
        done
    fi
    bench_stop
done

report() {
    bench_header "Memory benchmark" "$CMD"
    printf 'RSS read from /proc/PID/status (VmRSS; VmHWM = peak) %s s after each state was reached. VmRSS = RssAnon (heap, stacks: what the process allocated) + RssFile (pages of the executable and libraries mapped in, which depends on the page cache: the same binary can show a few MiB more or less from run to run) + RssShmem.\n\n' "$SETTLE"
    echo "| state | process | VmRSS (MiB) | of which anonymous | of which file-backed | VmHWM (MiB) | target | verdict |"
    echo "|---|---|---:|---:|---:|---:|---:|---|"
    awk -F'\t' '{
        rss = $3 / 1024; hwm = $4 / 1024; anon = $6 / 1024; file = $7 / 1024
        target = ($5 == "") ? "–" : ("< " $5 " MiB")
        verdict = ($5 == "") ? "reference" : ((rss < $5) ? "met" : "not met")
        printf "| %s | %s | %.1f | %.1f | %.1f | %.1f | %s | %s |\n", $1, $2, rss, anon, file, hwm, target, verdict
    }' "$ROWS"
    echo
    sed 's/^/- /' "$NOTES"
}
mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
bench_log "written to $OUT"
