#!/usr/bin/env bash
# Data-plane benchmark: throughput, p50/p99 latency and CPU per request of V2 inference, over
# REST (load from wrk) or, with --protocol grpc, gRPC ModelInfer (load from h2load, nghttp2)
#   direct   load → `coscale runtime` (the built-in V2 runtime alone)
#   nginx    load → nginx (1 worker, keepalive upstream, no access log; grpc_pass for gRPC)
#            → the same runtime
#   coscale  load → router (`coscale up`) → agent with the built-in runtime (1-replica Server)
# for each model × connection count, interleaved so that the three targets see the same machine
# conditions. CPU per request = utime+stime of the serving processes over the run / requests
# (direct: runtime; nginx: nginx master+worker + runtime; coscale: `coscale up` + agent).
#
# Usage: bench/dataplane.sh [--out FILE] [--duration SECONDS] [--conns "1 8 64"]
#                           [--models "iris iris-mlp"] [--warmup SECONDS] [--rounds N]
#                           [--protocol rest|grpc] [--streams M] [--steal-limit PCT]
# --streams M (gRPC only): calls in flight at a time on each connection (h2load -m; default 1),
# as a gRPC client multiplexes its calls over one connection.
# With --rounds N the whole interleaved sweep runs N times and every figure is the median over
# the rounds (hop, +p50 and % of direct are taken per round, against that round's direct run,
# before the median); the targets table also says in how many rounds each target was met.
# --steal-limit PCT (default 5): when the hypervisor ran other guests on our cores ("steal" in
# /proc/stat) for more than PCT % of one core during any of a cell's three runs, the three are
# repeated, up to 3 tries in all; the report says how many were repeated and how much was
# stolen in the runs kept.
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CMD="bench/dataplane.sh"
(($# == 0)) || CMD+="$(printf ' %q' "$@")"
DURATION=10
WARMUP=2
ROUNDS=1
CONNS="1 8 64"
MODELS="iris iris-mlp"
PROTOCOL=rest
STREAMS=1
STEAL_LIMIT=5
STEAL_TRIES=3
OUT=""
while (($#)); do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --conns) CONNS="$2"; shift 2 ;;
        --models) MODELS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --protocol) PROTOCOL="$2"; shift 2 ;;
        --streams) STREAMS="$2"; shift 2 ;;
        --steal-limit) STEAL_LIMIT="$2"; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) bench_die "unknown argument $1 (see --help)" ;;
    esac
done

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || bench_die "--rounds wants a whole number of at least 1, not '$ROUNDS'"
[[ "$PROTOCOL" == rest || "$PROTOCOL" == grpc ]] || bench_die "--protocol wants rest or grpc, not '$PROTOCOL'"
[[ "$STEAL_LIMIT" =~ ^[0-9]+$ ]] || bench_die "--steal-limit wants a whole percentage, not '$STEAL_LIMIT'"
[[ "$STREAMS" =~ ^[1-9][0-9]*$ ]] || bench_die "--streams wants a whole number of at least 1, not '$STREAMS'"
[[ "$PROTOCOL" == grpc || "$STREAMS" == 1 ]] || bench_die "--streams is for --protocol grpc (wrk sends one request at a time per connection)"
[[ -n "$OUT" ]] || OUT="$BENCH_ROOT/bench/results/dataplane-$(date +%Y%m%d-%H%M%S)$([[ $PROTOCOL == grpc ]] && echo -grpc).md"

bench_init
bench_need wrk wrk nginx nginx-light curl curl jq jq
[[ "$PROTOCOL" == rest ]] || bench_need h2load nghttp2-client python3 python3
bench_build
CLK_TCK="$(getconf CLK_TCK)"
BODY='{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}'
# gRPC: the same request as BENCH_TMP/grpc-MODEL.bin.
[[ "$PROTOCOL" == rest ]] || bench_grpc_bodies "$BENCH_TMP" $MODELS

# (a) the runtime alone
RT_HTTP="$(bench_free_port)"
RT_GRPC="$(bench_free_port)"
bench_runtime "$RT_HTTP" "$RT_GRPC" iris iris-mlp
bench_log "runtime pid $RT_PID on 127.0.0.1:$RT_HTTP"

# (b) nginx as a plain reverse proxy in front of the same runtime
bench_nginx "$RT_HTTP" "$RT_GRPC"
bench_log "nginx master $NGX_MASTER worker $NGX_WORKER on 127.0.0.1:$NGX_PORT"

# (c) coscale: control plane + router, one server replica holding both models
UP_DIR="$BENCH_TMP/up"
bench_manifest "$BENCH_TMP/bench.yaml"
bench_up "$UP_DIR" "$BENCH_TMP/bench.yaml"
bench_wait_servers "$UP_DIR" 60
bench_wait_models "$UP_DIR" 2 60 || bench_die "the bench models did not become available"
bench_log "coscale up pid $UP_PID, agent pid(s) ${AGENT_PIDS[*]}, router $ROUTER_HTTP"

if [[ "$PROTOCOL" == rest ]]; then
    declare -A URL=(
        [direct]="http://127.0.0.1:$RT_HTTP"
        [nginx]="http://127.0.0.1:$NGX_PORT"
        [coscale]="$ROUTER_HTTP"
    )
else
    declare -A URL=(
        [direct]="http://127.0.0.1:$RT_GRPC"
        [nginx]="http://127.0.0.1:$NGX_GRPC_PORT"
        [coscale]="${ROUTER_GRPC/#grpc:/http:}"
    )
fi
declare -A PIDS=(
    [direct]="$RT_PID"
    [nginx]="$NGX_MASTER $NGX_WORKER $RT_PID"
    [coscale]="$UP_PID ${AGENT_PIDS[*]}"
)
TARGETS="direct nginx coscale"

# One answer, as text that is the same from every target when they agree: REST the outputs'
# names and data; gRPC the grpc-status and the answer message's bytes (hex).
answer() { # target model
    if [[ "$PROTOCOL" == rest ]]; then
        curl -fsS --max-time 5 -H 'Content-Type: application/json' -d "$BODY" \
            "${URL[$1]}/v2/models/$2/infer" | jq -c '[.outputs[] | {name, data}]'
    else
        bench_grpc_answer "${URL[$1]}" "$BENCH_TMP/grpc-$2.bin"
    fi
}
# Every target must give the same answer before anything is timed. gRPC: the DATA bytes of a
# good answer, per target and model, to count answers without a message (errors carry none).
declare -A ANSWER_BYTES
for model in $MODELS; do
    want=""
    for t in $TARGETS; do
        got="$(answer "$t" "$model")" || bench_die "$t: inference on $model failed"
        [[ -z "$want" || "$got" == "$want" ]] || bench_die "$t answers $got for $model, direct answers $want"
        want="$got"
        [[ "$PROTOCOL" == rest ]] && continue
        [[ "$got" == *"grpc-status: 0" ]] || bench_die "$t: gRPC inference on $model failed: $got"
        ANSWER_BYTES[$t,$model]="$(bench_grpc_answer_bytes "${URL[$t]}" "$BENCH_TMP/grpc-$model.bin")"
    done
done

# Background CPU of each target's processes with no load (counted in its CPU/request too).
IDLE_SECONDS=10
declare -A IDLE0
for t in $TARGETS; do IDLE0[$t]="$(bench_cpu_ticks ${PIDS[$t]})"; done
sleep "$IDLE_SECONDS"
IDLE_NOTE="Idle CPU of the measured processes over ${IDLE_SECONDS} s before the runs (in % of one core):"
for t in $TARGETS; do
    IDLE_NOTE+=" $t $(awk -v d=$(($(bench_cpu_ticks ${PIDS[$t]}) - IDLE0[$t])) -v hz="$CLK_TCK" -v s="$IDLE_SECONDS" \
        'BEGIN { printf "%.1f", 100 * d / hz / s }') %;"
done

RAW="$BENCH_TMP/raw.tsv"
: >"$RAW"
# One closed-loop run: target model conns seconds → one RESULT line (bench/lib.sh).
run_load() {
    if [[ "$PROTOCOL" == rest ]]; then
        bench_wrk "${URL[$1]}" "$2" "$3" "$4"
    else
        bench_h2load "${URL[$1]}" "$BENCH_TMP/grpc-$2.bin" "$3" "$4" "$STREAMS" "${ANSWER_BYTES[$1,$2]}"
    fi
}
for round in $(seq 1 "$ROUNDS"); do
for model in $MODELS; do
    for t in $TARGETS; do
        run_load "$t" "$model" 8 "$WARMUP" >/dev/null
    done
    for c in $CONNS; do
        # The three targets back to back, repeated (up to STEAL_TRIES times in all) while the
        # hypervisor took more than STEAL_LIMIT % of a core during any of them, so that the
        # three runs compared in a round saw the same, quiet machine; the last try is kept.
        for try in $(seq 1 "$STEAL_TRIES"); do
            cell=""
            worst=0
            for t in $TARGETS; do
                # shellcheck disable=SC2086
                before="$(bench_cpu_ticks ${PIDS[$t]})"
                # shellcheck disable=SC2086
                agent_before="$(bench_cpu_ticks ${AGENT_PIDS[*]})"
                steal_before="$(bench_steal_ticks)"
                line="$(run_load "$t" "$model" "$c" "$DURATION")"
                stolen=$(($(bench_steal_ticks) - steal_before))
                # shellcheck disable=SC2086
                after="$(bench_cpu_ticks ${PIDS[$t]})"
                # shellcheck disable=SC2086
                agent_after="$(bench_cpu_ticks ${AGENT_PIDS[*]})"
                ((stolen > worst)) && worst=$stolen
                bench_log "round $round/$ROUNDS $model c=$c $t: $line cpu_ticks=$((after - before)) steal_ticks=$stolen"
                # RESULT requests= duration_us= rps= p50_us= p99_us= mean_us= errors= non2xx=
                # (then: the agent's own ticks, the part of coscale's that is not the router;
                # the round; the ticks stolen during the run and the tries the cell took)
                cell+="$(awk -v m="$model" -v t="$t" -v c="$c" -v r="$round" -v ticks="$((after - before))" \
                    -v aticks="$((agent_after - agent_before))" -v stolen="$stolen" -v tries="$try" '{
                    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                    print m, t, c, v["requests"], v["rps"], v["p50_us"], v["p99_us"], v["errors"], v["non2xx"], ticks, aticks, r, stolen, tries
                }' OFS='\t' <<<"$line")"$'\n'
            done
            ((worst * 100 > STEAL_LIMIT * CLK_TCK * DURATION)) || break
        done
        printf '%s' "$cell" >>"$RAW"
    done
done
done

# Tables: per cell, then the targets. Hop = proxied − direct, for CPU/request and for p50, taken
# per round against that round's direct run; every figure is the median over the rounds.
report() {
    bench_header "Data-plane benchmark" "$CMD"
    if [[ "$PROTOCOL" == rest ]]; then
        printf 'V2 REST infer; wrk %s' "$(wrk --version 2>&1 | awk 'NR == 1 { print $2 }')"
    else
        printf 'V2 gRPC ModelInfer; h2load %s (%s call(s) at a time per connection)' \
            "$(h2load --version | awk 'NR == 1 { print $2 }')" "$STREAMS"
    fi
    printf ', %s s per run (+%s s warm-up per target and model), threads = min(conns, 2), ' "$DURATION" "$WARMUP"
    printf 'nginx %s (1 worker, keepalive upstream), nothing pinned, CLK_TCK %s.\n\n' \
        "$(nginx -v 2>&1 | sed 's|.*/||')" "$CLK_TCK"
    if ((ROUNDS > 1)); then
        printf '%s rounds, each running every cell with the three targets back to back; each figure is the median over the rounds (hop, +p50 and %% of direct taken per round first).\n\n' "$ROUNDS"
    fi
    printf '%s\n\n' "${IDLE_NOTE%;}."
    awk -F'\t' -v hz="$CLK_TCK" -v d="$DURATION" -v lim="$STEAL_LIMIT" "$BENCH_AWK_LIB"'
        { pct[NR] = 100 * $13 / hz / d; if (pct[NR] > lim) over++ }
        $2 == "direct" { repeats += $14 - 1 }
        END {
            sort_numbers(pct, NR)
            printf "CPU stolen by the hypervisor (steal): cells with a run over %s %% of a core were run again (%d repeats); in the %d runs kept, median %.1f %%, max %.1f %% of a core (%d still over the limit).\n\n",
                lim, repeats, NR, pct[int((NR + 1) / 2)], pct[NR], over
        }' "$RAW"
    awk -F'\t' -v hz="$CLK_TCK" "$BENCH_AWK_LIB"'
    # median over the rounds of metric m of cell/target k (m: rps p50 p99 cpu acpu hop add pct)
    function med(m, k,    r, n, a) {
        n = 0
        for (r = 1; r <= rounds; r++) if ((m, k, r) in v) a[++n] = v[m, k, r]
        return n ? median(a, n) : 0
    }
    # whether the value c of metric m (coscale) meets its target, x being nginx value
    function ok(m, c, x) {
        return m == "hop" ? c <= x : m == "add" ? c <= 1.25 * x : c >= 85
    }
    # the rounds in which coscale met the target on metric m in a cell
    function rounds_met(m, cell,    r, n, c) {
        c = cell SUBSEP "coscale"
        for (r = 1; r <= rounds; r++)
            if (((m, c, r) in v) && ok(m, v[m, c, r], v[m, cell SUBSEP "nginx", r])) n++
        return n + 0
    }
    {
        k = $1 SUBSEP $3 SUBSEP $2; r = $12
        if (r > rounds) rounds = r
        v["rps", k, r] = $5; v["p50", k, r] = $6; v["p99", k, r] = $7; err[k] += $8 + $9
        v["cpu", k, r] = $4 > 0 ? $10 * 1e6 / hz / $4 : 0
        v["acpu", k, r] = $4 > 0 ? $11 * 1e6 / hz / $4 : 0
        if (!seen[$1 SUBSEP $3]++) order[++n] = $1 SUBSEP $3
    }
    END {
        split("direct nginx coscale", T, " ")
        # per-round differences against the same round'"'"'s direct run
        for (i = 1; i <= n; i++) {
            d = order[i] SUBSEP "direct"
            for (j = 2; j <= 3; j++) {
                k = order[i] SUBSEP T[j]
                for (r = 1; r <= rounds; r++) {
                    if (!(("rps", k, r) in v) || !(("rps", d, r) in v)) continue
                    v["hop", k, r] = v["cpu", k, r] - v["cpu", d, r]
                    v["add", k, r] = v["p50", k, r] - v["p50", d, r]
                    v["pct", k, r] = 100 * v["rps", k, r] / v["rps", d, r]
                    if (j == 3) v["extra", k, r] = v["acpu", k, r] - v["cpu", d, r]
                }
            }
        }
        print "| model | conns | target | req/s | % of direct | p50 (µs) | p99 (µs) | +p50 vs direct (µs) | CPU/req (µs) | hop CPU/req (µs) | errors |"
        print "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= n; i++) {
            split(order[i], mc, SUBSEP)
            for (j = 1; j <= 3; j++) {
                k = order[i] SUBSEP T[j]
                if (!(("rps", k, 1) in v)) continue
                pct = j == 1 ? 100 : med("pct", k)
                hop = j == 1 ? "–" : sprintf("%.1f", med("hop", k))
                add = j == 1 ? "–" : sprintf("%+.0f", med("add", k))
                printf "| %s | %s | %s | %.0f | %.0f %% | %.0f | %.0f | %s | %.1f | %s | %d |\n",
                    mc[1], mc[2], T[j], med("rps", k), pct, med("p50", k), med("p99", k), add, med("cpu", k), hop, err[k]
            }
        }
        print ""
        print "Where the CPU per request of coscale goes (µs): the router (with the idle control plane, in coscale up) and the agent (with the built-in runtime), against the runtime alone:"
        print ""
        print "| model | conns | router + control | agent | runtime alone (direct) | agent − runtime alone |"
        print "|---|---:|---:|---:|---:|---:|"
        for (i = 1; i <= n; i++) {
            split(order[i], mc, SUBSEP); d = order[i] SUBSEP "direct"; c = order[i] SUBSEP "coscale"
            if (!(("rps", c, 1) in v) || !(("rps", d, 1) in v)) continue
            for (r = 1; r <= rounds; r++) if (("cpu", c, r) in v) v["router", c, r] = v["cpu", c, r] - v["acpu", c, r]
            printf "| %s | %s | %.1f | %.1f | %.1f | %+.1f |\n", mc[1], mc[2], med("router", c), med("acpu", c), med("cpu", d), med("extra", c)
        }
        print ""
        print "Targets (coscale vs nginx, same run" (rounds > 1 ? "; medians, and the rounds in which coscale met the target" : "") "):"
        print ""
        print "| model | conns | check | coscale | limit | verdict |" (rounds > 1 ? " rounds met |" : "")
        print "|---|---:|---|---:|---:|---|" (rounds > 1 ? "---:|" : "")
        for (i = 1; i <= n; i++) {
            split(order[i], mc, SUBSEP); d = order[i] SUBSEP "direct"
            x = order[i] SUBSEP "nginx"; c = order[i] SUBSEP "coscale"
            if (!(("rps", x, 1) in v) || !(("rps", c, 1) in v)) continue
            hc = med("hop", c); hx = med("hop", x)
            printf "| %s | %s | hop CPU/req ≤ nginx hop | %.1f µs | %.1f µs | %s |%s\n",
                mc[1], mc[2], hc, hx, (ok("hop", hc, hx) ? "met" : "not met"), (rounds > 1 ? sprintf(" %d of %d |", rounds_met("hop", order[i]), rounds) : "")
            if (mc[2] == 1) {
                ac = med("add", c); ax = med("add", x)
                printf "| %s | 1 | added p50 ≤ 1.25 × nginx added p50 | %.0f µs | %.0f µs | %s |%s\n",
                    mc[1], ac, 1.25 * ax, (ok("add", ac, ax) ? "met" : "not met"), (rounds > 1 ? sprintf(" %d of %d |", rounds_met("add", order[i]), rounds) : "")
                printf "| %s | 1 | p50 ≤ 1.25 × nginx p50 | %.0f µs | %.0f µs | %s |%s\n",
                    mc[1], med("p50", c), 1.25 * med("p50", x), (med("p50", c) <= 1.25 * med("p50", x) ? "met" : "not met"), (rounds > 1 ? " |" : "")
            }
            if (mc[1] == "iris-mlp") {
                pc = med("pct", c)
                printf "| %s | %s | req/s ≥ 85 %% of direct | %.0f %% | 85 %% | %s |%s\n",
                    mc[1], mc[2], pc, (ok("pct", pc) ? "met" : "not met"), (rounds > 1 ? sprintf(" %d of %d |", rounds_met("pct", order[i]), rounds) : "")
            }
        }
    }' "$RAW"
}
mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
bench_log "written to $OUT"
