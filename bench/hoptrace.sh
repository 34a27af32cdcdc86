#!/usr/bin/env bash
# Where a proxy hop's time goes at one connection. Starts the runtime alone with HAProxy in TCP
# mode in front of it (a layer-4 hop that parses nothing, as in `bench/ab.sh haproxy/NAME`) and
# the platform (`coscale up`, a 1-replica builtin Server); for each path, while `wrk -c 1` sends
# V2 REST inference requests, records every system call's entry and exit of the proxy and its
# backend (`perf record -e raw_syscalls:*`) and splits each request's round trip into steps:
# the proxy's own work, its writes, the wake-ups of the process that was asleep, and the
# backend's work. Medians per request, in µs; the tracing itself slows every system call a
# little, the same for both paths.
#
# Usage: bench/hoptrace.sh [--model iris-mlp] [--duration 3] [--out FILE]
# Needs perf (Debian linux-perf) and the right to trace other processes (root, or
# kernel.perf_event_paranoid ≤ -1). Everything listens on 127.0.0.1; every process started here
# is stopped on exit.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CMD="bench/hoptrace.sh$(printf ' %q' "$@")"
MODEL=iris-mlp
DURATION=3
OUT=""
while (($#)); do
    case "$1" in
        --model) MODEL="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) bench_die "unknown argument $1 (see --help)" ;;
    esac
done
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || bench_die "--duration wants a whole number of seconds, not '$DURATION'"
[[ "$MODEL" == iris || "$MODEL" == iris-mlp ]] || bench_die "--model wants iris or iris-mlp, not '$MODEL'"
[[ -n "$OUT" ]] || OUT="$BENCH_ROOT/bench/results/hoptrace-$(date +%Y%m%d-%H%M%S).md"

bench_init
bench_need wrk wrk curl curl jq jq haproxy haproxy perf linux-perf ss iproute2
bench_build
perf record -q -e raw_syscalls:sys_enter -o "$BENCH_TMP/probe.data" -- true 2>/dev/null ||
    bench_die "perf cannot trace system calls here (run as root, or lower kernel.perf_event_paranoid)"

RT_HTTP="$(bench_free_port)" RT_GRPC="$(bench_free_port)"
bench_runtime "$RT_HTTP" "$RT_GRPC" iris iris-mlp
bench_haproxy "$RT_HTTP" "$RT_GRPC"
bench_manifest "$BENCH_TMP/bench.yaml"
bench_up "$BENCH_TMP/up" "$BENCH_TMP/bench.yaml"
bench_wait_servers "$BENCH_TMP/up" 60
bench_wait_models "$BENCH_TMP/up" 2 60 || bench_die "the bench models did not become available"

# The fd of PID's connection from wrk to PORT: fd_of PID PORT (waits for it, up to 10 s).
fd_of() {
    local deadline=$((SECONDS + 10)) fd
    while :; do
        fd="$(ss -tnpH state established "( sport = :$2 )" 2>/dev/null |
            grep -o "pid=$1,fd=[0-9]*" | head -1 | sed 's/.*fd=//')"
        [[ -z "$fd" ]] || { echo "$fd"; return 0; }
        ((SECONDS < deadline)) || bench_die "no connection from wrk to port $2 in process $1"
        sleep 0.1
    done
}

# trace NAME URL PROXY_PID BACKEND_PID: one traced run; writes BENCH_TMP/NAME.tsv (step, µs per
# request) and prints the number of requests matched.
trace() {
    local name="$1" url="$2" proxy="$3" backend="$4" port fd
    port="${url##*:}"
    bench_wrk "$url" "$MODEL" 1 1 >/dev/null
    wrk -t 1 -c 1 -d "$((DURATION + 2))s" -s "$BENCH_ROOT/bench/infer.lua" \
        "$url/v2/models/$MODEL/infer" >"$BENCH_TMP/$name.wrk" &
    local wrk_pid=$!
    fd="$(fd_of "$proxy" "$port")"
    perf record -q -e raw_syscalls:sys_enter,raw_syscalls:sys_exit -p "$proxy,$backend" \
        -o "$BENCH_TMP/$name.data" -- sleep "$DURATION" 2>/dev/null
    wait "$wrk_pid"
    perf script -i "$BENCH_TMP/$name.data" -F pid,tid,time,event,trace 2>/dev/null |
        python3 "$BENCH_TMP/steps.py" "$proxy" "$backend" "$fd" >"$BENCH_TMP/$name.tsv"
}

cat >"$BENCH_TMP/steps.py" <<'PY'
# Reads `perf script -F pid,tid,time,event,trace` of raw_syscalls enter/exit; argv: proxy pid,
# backend pid, the proxy's client fd (decimal). Prints "step<TAB>median µs" lines and "requests<TAB>n".
import re, statistics, sys

proxy, backend, client = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
READS, WRITES, WAITS = {0, 17, 19, 45, 47}, {1, 18, 20, 44, 46}, {7, 232, 281}
line_re = re.compile(r"\s*(\d+)/(\d+)\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit): NR (\d+) (?:\((\w+)|= (-?\d+))")
calls, open_calls = [], {}
for line in sys.stdin:
    m = line_re.match(line)
    if not m:
        continue
    pid, tid, t, kind, nr = int(m[1]), int(m[2]), float(m[3]) * 1e6, m[4], int(m[5])
    if kind == "enter":
        open_calls[tid] = (pid, nr, int(m[6], 16) if m[6] else -1, t)
    elif tid in open_calls and open_calls[tid][1] == nr:
        pid, nr, fd, t0 = open_calls.pop(tid)
        calls.append((t0, t, pid, tid, nr, fd, int(m[7])))
calls.sort()
P = [c for c in calls if c[2] == proxy]
B = [c for c in calls if c[2] == backend]

def first(seq, start, pred):
    for i in range(start, len(seq)):
        if pred(seq[i]):
            return i
    return None

def woken_before(seq, i):
    """End of the wait (epoll_wait & co.) that last returned on call i's thread before it."""
    for j in range(i - 1, -1, -1):
        if seq[j][3] == seq[i][3] and seq[j][4] in WAITS:
            return seq[j][1]
    return None

steps = {k: [] for k in "abcdefgh"}
i = b = 0
while True:
    # the request: read on the client's connection, then written to the backend
    r1 = first(P, i, lambda c: c[4] in READS and c[5] == client and c[6] > 0)
    if r1 is None:
        break
    s1 = first(P, r1 + 1, lambda c: c[4] in WRITES and c[5] != client and c[6] > 0)
    if s1 is None:
        break
    sent = P[s1][1]
    bw = first(B, b, lambda c: c[4] in WAITS and c[1] > sent)
    bs = None if bw is None else first(B, bw, lambda c: c[4] in WRITES and c[6] > 0)
    if bs is None:
        break
    answered = B[bs][1]
    r2 = first(P, s1 + 1, lambda c: c[4] in READS and c[5] != client and c[6] > 0 and c[0] > answered)
    s2 = None if r2 is None else first(P, r2 + 1, lambda c: c[4] in WRITES and c[5] == client and c[6] > 0)
    if s2 is None:
        break
    w1, w2 = woken_before(P, r1), woken_before(P, r2)
    i, b = s2 + 1, bs + 1
    # Only requests whose two proxy reads each followed a wait that ended after the data came
    # (the proxy was asleep when it arrived), as at one connection they all should.
    if w1 is None or w2 is None or w2 < answered:
        continue
    steps["a"].append(P[r1][0] - w1)
    steps["b"].append(P[s1][0] - P[r1][1])
    steps["c"].append(P[s1][1] - P[s1][0])
    steps["d"].append(B[bw][1] - sent)
    steps["e"].append(B[bs][0] - B[bw][1])
    steps["f"].append(w2 - answered)
    steps["g"].append(P[s2][0] - w2)
    steps["h"].append(P[s2][1] - P[s2][0])
for k, v in steps.items():
    print(f"{k}\t{statistics.median(v):.0f}" if v else f"{k}\t–")
print(f"requests\t{len(steps['a'])}")
PY

trace coscale "$ROUTER_HTTP" "$UP_PID" "${AGENT_PIDS[0]}"
trace haproxy "http://127.0.0.1:$HAP_PORT" "$HAP_PID" "$RT_PID"

report() {
    bench_header "Where a proxy hop's time goes (one connection)" "$CMD"
    printf 'V2 REST infer of %s, `wrk -t 1 -c 1`, %s s traced per path (`perf record -e raw_syscalls:sys_enter,raw_syscalls:sys_exit -p PROXY,BACKEND`); HAProxy %s (TCP mode, 1 thread). Medians per request, µs.\n\n' \
        "$MODEL" "$DURATION" "$(haproxy -v | awk 'NR == 1 { print $3 }')"
    awk -F'\t' '
        FNR == 1 { f++ }
        { v[f, $1] = $2 }
        END {
            split("a b c d e f g h", k, " ")
            t["a"] = "proxy: woken → reads the request"
            t["b"] = "proxy: reads → writes it to the backend"
            t["c"] = "proxy: the write (the kernel delivers it and wakes the backend)"
            t["d"] = "**the backend'"'"'s wake-up**: write returned → its wait returns"
            t["e"] = "backend: woken → writes its answer (inference included)"
            t["f"] = "**the proxy'"'"'s wake-up**: answer written → its wait returns"
            t["g"] = "proxy: woken → reads the answer, writes it to the client"
            t["h"] = "proxy: the write to the client"
            print "| step | coscale (router → agent) | HAProxy TCP (→ runtime alone) |"
            print "|---|---:|---:|"
            for (i = 1; i <= 8; i++) printf "| %s | %s | %s |\n", t[k[i]], v[1, k[i]], v[2, k[i]]
            printf "| requests matched | %s | %s |\n", v[1, "requests"], v[2, "requests"]
        }' "$BENCH_TMP/coscale.tsv" "$BENCH_TMP/haproxy.tsv"
}
mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
bench_log "written to $OUT"
