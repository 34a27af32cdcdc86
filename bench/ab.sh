#!/usr/bin/env bash
# A/B data-plane comparison of builds, settings or proxies. Each VARIANT is started once: the
# runtime alone (`coscale runtime`), the platform (`coscale up` with a 1-replica builtin Server
# holding iris and iris-mlp, load through the router), or a proxy in front of a runtime of its
# own (nginx as in bench/dataplane.sh, or HAProxy in TCP mode: a layer-4 hop that parses
# nothing), each with its own binary and environment. Then
# wrk (V2 REST) or, with --protocol grpc, h2load (V2 gRPC ModelInfer, --streams calls at a
# time per connection, default 1) loads them in turns, every variant once per round in the order given, so that they see the
# same machine; a run during which the hypervisor took more than --steal-limit % of a core
# ("steal" in /proc/stat) is repeated, up to 3 runs. Per variant, medians over the rounds of
# req/s, p50, CPU per request (utime+stime of its processes / requests), context switches per
# request, and req/s in % of the first variant (taken per round).
#
# Usage: bench/ab.sh [--model iris-mlp] [--conns 64] [--duration 3] [--rounds 5] [--rows 1]
#                    [--protocol rest|grpc] [--streams 1] [--steal-limit 5] [--out FILE] VARIANT...
#   --rows N: rows of 4 features in each request (one by default, as bench/dataplane.sh sends).
#   VARIANT = KIND/NAME[:VAR=VALUE,...]: KIND is rt, up, nginx or haproxy; VAR=VALUE are
#   environment variables of that variant's processes (e.g. COSCALE_ROUTER_THREADS=1); BIN=PATH
#   runs another coscale binary (e.g. a copy of an older build). A proxy's CPU counts the proxy's
#   processes and its runtime, as coscale's counts `coscale up` and the agent.
# Examples: bench/ab.sh rt/direct up/shared up/one-thread:COSCALE_ROUTER_THREADS=1
#           bench/ab.sh --conns 8 rt/direct nginx/nginx haproxy/l4 up/coscale
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CMD="bench/ab.sh$(printf ' %q' "$@")"
MODEL=iris-mlp
CONNS=64
DURATION=3
ROUNDS=5
PROTOCOL=rest
STREAMS=1
ROWS=1
STEAL_LIMIT=5
STEAL_TRIES=3
OUT=""
VARIANTS=()
while (($#)); do
    case "$1" in
        --model) MODEL="$2"; shift 2 ;;
        --conns) CONNS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --protocol) PROTOCOL="$2"; shift 2 ;;
        --streams) STREAMS="$2"; shift 2 ;;
        --rows) ROWS="$2"; shift 2 ;;
        --steal-limit) STEAL_LIMIT="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        -*) bench_die "unknown option $1 (see --help)" ;;
        *) VARIANTS+=("$1"); shift ;;
    esac
done
((${#VARIANTS[@]} >= 1)) || bench_die "name at least one variant (see --help)"
for n in "$CONNS" "$DURATION" "$ROUNDS" "$ROWS"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || bench_die "--conns, --duration, --rounds and --rows want whole numbers of at least 1, not '$n'"
done
# Read by bench/infer.lua (wrk) and bench_grpc_bodies.
export BENCH_ROWS="$ROWS"
[[ "$STEAL_LIMIT" =~ ^[0-9]+$ ]] || bench_die "--steal-limit wants a whole percentage, not '$STEAL_LIMIT'"
[[ "$MODEL" == iris || "$MODEL" == iris-mlp ]] || bench_die "--model wants iris or iris-mlp, not '$MODEL'"
[[ "$PROTOCOL" == rest || "$PROTOCOL" == grpc ]] || bench_die "--protocol wants rest or grpc, not '$PROTOCOL'"
[[ -n "$OUT" ]] || OUT="$BENCH_ROOT/bench/results/ab-$(date +%Y%m%d-%H%M%S).md"

# Which proxies the variants use (installed if missing, their versions in the report).
USES_NGINX="" USES_HAPROXY=""
[[ " ${VARIANTS[*]}" != *" nginx/"* ]] || USES_NGINX=1
[[ " ${VARIANTS[*]}" != *" haproxy/"* ]] || USES_HAPROXY=1

bench_init
bench_need wrk wrk curl curl jq jq
[[ -z "$USES_NGINX" ]] || bench_need nginx nginx-light
[[ -z "$USES_HAPROXY" ]] || bench_need haproxy haproxy
[[ "$PROTOCOL" == rest ]] || bench_need h2load nghttp2-client python3 python3
bench_build
CLK_TCK="$(getconf CLK_TCK)"
bench_manifest "$BENCH_TMP/bench.yaml"
[[ "$PROTOCOL" == rest ]] || bench_grpc_bodies "$BENCH_TMP" "$MODEL"
BODY_FILE="$BENCH_TMP/grpc-$MODEL.bin"

# Context switches (voluntary and involuntary) of every thread of the given pids.
ctx_switches() {
    local pid total=0 n
    for pid in "$@"; do
        n="$(cat "/proc/$pid"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }')"
        total=$((total + n))
    done
    echo "$total"
}

declare -A URL PIDS OK_BYTES
NAMES=()
for v in "${VARIANTS[@]}"; do
    [[ "$v" =~ ^(rt|up|nginx|haproxy)/([A-Za-z0-9._-]+)(:(.*))?$ ]] ||
        bench_die "variant '$v' is not KIND/NAME[:VAR=VALUE,...] with KIND rt, up, nginx or haproxy"
    kind="${BASH_REMATCH[1]}" name="${BASH_REMATCH[2]}" settings="${BASH_REMATCH[4]}"
    [[ -z "${URL[$name]:-}" ]] || bench_die "two variants are named $name"
    envs=()
    [[ -z "$settings" ]] || IFS=, read -r -a envs <<<"$settings"
    for e in "${envs[@]}"; do
        [[ "$e" =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || bench_die "variant $name: '$e' is not VAR=VALUE"
    done
    # The variant's settings (and BIN) hold for the processes it starts, in a subshell that
    # hands their pids to this shell, or stops them if it fails.
    (
        trap '(($? == 0)) || bench_stop' EXIT
        for e in "${envs[@]}"; do export "${e?}"; done
        [[ -x "$BIN" ]] || bench_die "variant $name: no executable $BIN"
        if [[ "$kind" != up ]]; then
            http="$(bench_free_port)" grpc="$(bench_free_port)"
            bench_runtime "$http" "$grpc" iris iris-mlp
            case "$kind" in
                rt) urls=("http://127.0.0.1:$http" "http://127.0.0.1:$grpc") pids="$RT_PID" ;;
                nginx)
                    bench_nginx "$http" "$grpc"
                    urls=("http://127.0.0.1:$NGX_PORT" "http://127.0.0.1:$NGX_GRPC_PORT")
                    pids="$NGX_MASTER $NGX_WORKER $RT_PID" ;;
                haproxy)
                    bench_haproxy "$http" "$grpc"
                    urls=("http://127.0.0.1:$HAP_PORT" "http://127.0.0.1:$HAP_GRPC_PORT")
                    pids="$HAP_PID $RT_PID" ;;
            esac
            printf '%s\n%s\n%s\n' "${urls[@]}" "$pids" >"$BENCH_TMP/$name.started"
        else
            bench_up "$BENCH_TMP/up-$name" "$BENCH_TMP/bench.yaml"
            bench_wait_servers "$BENCH_TMP/up-$name" 60
            bench_wait_models "$BENCH_TMP/up-$name" 2 60 || bench_die "variant $name: models not available"
            printf '%s\n%s\n%s\n' "$ROUTER_HTTP" "${ROUTER_GRPC/#grpc:/http:}" "$UP_PID ${AGENT_PIDS[*]}" \
                >"$BENCH_TMP/$name.started"
        fi
    )
    { read -r rest_url; read -r grpc_url; read -r PIDS[$name]; } <"$BENCH_TMP/$name.started"
    if [[ "$PROTOCOL" == rest ]]; then
        URL[$name]="$rest_url"
    else
        URL[$name]="$grpc_url"
        # Every variant must answer the call, and the same, before anything is timed.
        got="$(bench_grpc_answer "$grpc_url" "$BODY_FILE")" || bench_die "variant $name: gRPC inference failed"
        [[ "$got" == *"grpc-status: 0" ]] || bench_die "variant $name: gRPC inference failed: $got"
        [[ -z "${WANT:-}" || "$got" == "$WANT" ]] || bench_die "variant $name answers $got, ${NAMES[0]} answers $WANT"
        WANT="$got"
        OK_BYTES[$name]="$(bench_grpc_answer_bytes "$grpc_url" "$BODY_FILE")"
    fi
    # shellcheck disable=SC2206
    for p in ${PIDS[$name]}; do bench_track "$p"; done
    NAMES+=("$name")
    bench_log "variant $name ($kind${settings:+, $settings}): ${URL[$name]}, pids ${PIDS[$name]}"
done

run_load() { # name seconds → one RESULT line (bench/lib.sh)
    if [[ "$PROTOCOL" == rest ]]; then
        bench_wrk "${URL[$1]}" "$MODEL" "$CONNS" "$2"
    else
        bench_h2load "${URL[$1]}" "$BODY_FILE" "$CONNS" "$2" "$STREAMS" "${OK_BYTES[$1]}"
    fi
}
for name in "${NAMES[@]}"; do run_load "$name" 2 >/dev/null; done

RAW="$BENCH_TMP/raw.tsv"
: >"$RAW"
for round in $(seq 1 "$ROUNDS"); do
    for name in "${NAMES[@]}"; do
        for try in $(seq 1 "$STEAL_TRIES"); do
            # shellcheck disable=SC2086
            ticks0="$(bench_cpu_ticks ${PIDS[$name]})" ctx0="$(ctx_switches ${PIDS[$name]})"
            steal0="$(bench_steal_ticks)"
            line="$(run_load "$name" "$DURATION")"
            stolen=$(($(bench_steal_ticks) - steal0))
            # shellcheck disable=SC2086
            ticks=$(($(bench_cpu_ticks ${PIDS[$name]}) - ticks0)) ctx=$(($(ctx_switches ${PIDS[$name]}) - ctx0))
            bench_log "round $round/$ROUNDS $name: $line cpu_ticks=$ticks steal_ticks=$stolen"
            ((stolen * 100 > STEAL_LIMIT * CLK_TCK * DURATION)) || break
        done
        awk -v n="$name" -v r="$round" -v ticks="$ticks" -v ctx="$ctx" -v stolen="$stolen" -v tries="$try" '{
            for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            print n, r, v["requests"], v["rps"], v["p50_us"], v["errors"] + v["non2xx"], ticks, ctx, stolen, tries
        }' OFS='\t' <<<"$line" >>"$RAW"
    done
done

report() {
    bench_header "A/B data-plane comparison" "$CMD"
    if [[ "$PROTOCOL" == rest ]]; then
        printf 'V2 REST infer of %s (%s×4 FP32), wrk %s' "$MODEL" "$ROWS" "$(wrk --version 2>&1 | awk 'NR == 1 { print $2 }')"
    else
        printf 'V2 gRPC ModelInfer of %s (%s×4 FP32), h2load %s (%s call(s) at a time per connection)' \
            "$MODEL" "$ROWS" "$(h2load --version | awk 'NR == 1 { print $2 }')" "$STREAMS"
    fi
    [[ -z "$USES_NGINX" ]] || printf '; nginx %s (1 worker, keepalive upstream)' "$(nginx -v 2>&1 | sed 's|.*/||')"
    [[ -z "$USES_HAPROXY" ]] || printf '; HAProxy %s (TCP mode, 1 thread)' "$(haproxy -v | awk 'NR == 1 { print $3 }')"
    printf ', %s connections, threads = min(conns, 2), %s s per run, %s rounds (every variant once per round, in this order); medians over the rounds, %% of %s taken per round. CLK_TCK %s.\n\n' \
        "$CONNS" "$DURATION" "$ROUNDS" "${NAMES[0]}" "$CLK_TCK"
    for v in "${VARIANTS[@]}"; do printf -- '- `%s`\n' "$v"; done
    printf '\n'
    awk -F'\t' -v hz="$CLK_TCK" -v d="$DURATION" -v lim="$STEAL_LIMIT" -v first="${NAMES[0]}" "$BENCH_AWK_LIB"'
    function med(m, name,    r, n, a) {
        n = 0
        for (r = 1; r <= rounds; r++) if ((m, name, r) in v) a[++n] = v[m, name, r]
        return median(a, n)
    }
    {
        if (!seen[$1]++) order[++names] = $1
        if ($2 > rounds) rounds = $2
        v["rps", $1, $2] = $4; v["p50", $1, $2] = $5; err[$1] += $6
        v["cpu", $1, $2] = $3 > 0 ? $7 * 1e6 / hz / $3 : 0
        v["ctx", $1, $2] = $3 > 0 ? $8 / $3 : 0
        repeats[$1] += $10 - 1
        if (100 * $9 / hz / d > lim) over[$1]++
    }
    END {
        print "| variant | req/s | % of " first " | p50 (µs) | CPU/req (µs) | context switches/req | errors | runs repeated for steal | runs kept over the steal limit |"
        print "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= names; i++) {
            x = order[i]
            for (r = 1; r <= rounds; r++) if ((("rps", x, r) in v) && v["rps", first, r] > 0) v["pct", x, r] = 100 * v["rps", x, r] / v["rps", first, r]
            printf "| %s | %.0f | %.0f %% | %.0f | %.1f | %.2f | %d | %d | %d |\n", x, med("rps", x), med("pct", x), med("p50", x), med("cpu", x), med("ctx", x), err[x], repeats[x], over[x]
        }
    }' "$RAW"
}
mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
bench_log "written to $OUT"
