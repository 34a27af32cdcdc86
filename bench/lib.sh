# Shared helpers for the bench/*.sh scripts (sourced, not run). Everything here talks only to
# 127.0.0.1, waits with deadlines, and remembers every process it starts so that `bench_stop`
# (installed as the EXIT trap by `bench_init`) can stop exactly those processes by pid.

BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# COSCALE_BIN overrides the binary (e.g. a debug build for a quick check of the scripts); then
# nothing is built.
BIN="${COSCALE_BIN:-$BENCH_ROOT/target/release/coscale}"
BENCH_PIDS=()
BENCH_TMP=""
# Rows in each inference request of bench/infer.lua and bench_grpc_bodies: one, whatever the
# environment says, unless a script sets it after sourcing this (bench/ab.sh --rows).
export BENCH_ROWS=1

bench_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
bench_die() { bench_log "error: $*"; exit 1; }

# Stops every process recorded in BENCH_PIDS, oldest first (so `coscale up` stops its own replicas
# before they are signalled one by one): SIGTERM, up to 10 s, then SIGKILL.
bench_stop() {
    local pid deadline
    for pid in "${BENCH_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    BENCH_PIDS=()
}

# The EXIT trap: stops everything; keeps the temporary folder (logs) only after a failure.
bench_on_exit() {
    local rc=$?
    bench_stop
    if ((rc == 0)); then
        rm -rf "$BENCH_TMP"
    else
        bench_log "failed (exit $rc); logs kept in $BENCH_TMP"
    fi
}

bench_init() {
    BENCH_TMP="$(mktemp -d /tmp/coscale-bench.XXXXXX)"
    trap bench_on_exit EXIT
    trap 'exit 130' INT TERM
}

bench_track() { BENCH_PIDS+=("$1"); }

# Installs Debian packages whose command is missing: bench_need CMD PKG [CMD PKG]...
bench_need() {
    local missing=()
    while (($#)); do
        command -v "$1" >/dev/null 2>&1 || missing+=("$2")
        shift 2
    done
    ((${#missing[@]})) || return 0
    bench_log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Builds the release binary when it is missing or older than any source file.
bench_build() {
    [[ -z "${COSCALE_BIN:-}" ]] || return 0
    if [[ -x "$BIN" ]] && [[ -z "$(find "$BENCH_ROOT/crates" "$BENCH_ROOT/Cargo.toml" -newer "$BIN" \
        \( -name '*.rs' -o -name '*.toml' -o -name '*.proto' \) -print -quit)" ]]; then
        return 0
    fi
    bench_log "building the release binary (cargo build --release -p coscale-cli)"
    (cd "$BENCH_ROOT" && cargo build --release -p coscale-cli >&2)
}

# Prints a TCP port on 127.0.0.1 that was free a moment ago.
bench_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# bench_wait_http URL SECONDS [PID]: waits until URL answers 2xx; fails early if PID died.
bench_wait_http() {
    local url="$1" deadline=$((SECONDS + $2)) pid="${3:-}"
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then bench_die "process $pid died before $url answered"; fi
        ((SECONDS < deadline)) || bench_die "$url did not answer within $2 s"
        sleep 0.1
    done
}

# bench_wait_file PATH SECONDS
bench_wait_file() {
    local deadline=$((SECONDS + $2))
    until [[ -s "$1" ]]; do
        ((SECONDS < deadline)) || bench_die "$1 did not appear within $2 s"
        sleep 0.1
    done
}

# utime+stime of the given pids, summed, in clock ticks (fields 14 and 15 of /proc/PID/stat,
# counted after the ")" that closes the command name, which may hold spaces).
bench_cpu_ticks() {
    local pid total=0 f
    for pid in "$@"; do
        read -r -a f < <(sed 's/^.*) //' "/proc/$pid/stat")
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# CPU time the hypervisor gave to other guests while this one wanted it ("steal", the 8th
# figure of the cpu line of /proc/stat), over all cores, in clock ticks.
bench_steal_ticks() { awk '$1 == "cpu" { print $9 }' /proc/stat; }

# awk functions shared by the reports, put in front of a program: awk "$BENCH_AWK_LIB"'...'
#   sort_numbers(a, n): sorts a[1..n] in place, smallest first
#   median(a, n): the median of a[1..n] (sorts a)
BENCH_AWK_LIB='
function sort_numbers(a, n,    i, j, x) {
    for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
}
function median(a, n) {
    sort_numbers(a, n)
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
'

# bench_status_kib PID FIELD: a kB field (VmRSS, VmHWM) of /proc/PID/status.
bench_status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

bench_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

bench_machine() {
    local cpu
    cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    printf '%s, %s cores (nproc), kernel %s' "$cpu" "$(nproc)" "$(uname -r)"
}

# The markdown header every result file starts with.
bench_header() {
    local title="$1" cmd="$2"
    printf '# %s\n\n' "$title"
    printf -- '- date: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf -- '- machine: %s; load average at start: %s\n' "$(bench_machine)" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf -- '- commit: %s%s\n' "$(git -C "$BENCH_ROOT" rev-parse --short HEAD)" \
        "$(git -C "$BENCH_ROOT" diff --quiet HEAD -- crates 2>/dev/null || echo ' (crates/ has uncommitted changes)')"
    [[ -z "${COSCALE_BIN:-}" ]] || printf -- '- binary measured: %s (COSCALE_BIN)\n' "$COSCALE_BIN"
    [[ -z "${COSCALE_ROUTER_THREADS:-}" ]] || printf -- '- router threads: %s (COSCALE_ROUTER_THREADS)\n' "$COSCALE_ROUTER_THREADS"
    printf -- '- command: `%s`\n\n' "$cmd"
}

# The data-plane benchmarks' platform: a 1-replica `builtin` Server holding iris and iris-mlp,
# written to FILE: bench_manifest FILE.
bench_manifest() {
    cat >"$1" <<EOF
apiVersion: mlops.seldon.io/v1alpha1
kind: Server
metadata:
  name: bench
spec:
  serverConfig: builtin
  replicas: 1
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata:
  name: iris
spec:
  storageUri: file://$BENCH_ROOT/examples/models/iris
  requirements: [onnx]
  memory: 1Mi
  replicas: 1
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata:
  name: iris-mlp
spec:
  storageUri: file://$BENCH_ROOT/examples/models/iris-mlp
  requirements: [onnx]
  memory: 8Mi
  replicas: 1
EOF
}

# coscale up on free ports: bench_up DATA_DIR [MANIFEST]; sets UP_PID and the endpoint variables
# API, ROUTER_HTTP, ROUTER_GRPC; waits until endpoints.json is written and the API answers.
bench_up() {
    local dir="$1" manifest="${2:-}" args=()
    [[ -n "$manifest" ]] && args=(-f "$manifest")
    "$BIN" up --data-dir "$dir" --api-addr 127.0.0.1:0 --agent-addr 127.0.0.1:0 \
        --router-addr 127.0.0.1:0 --router-grpc-addr 127.0.0.1:0 "${args[@]}" \
        >"$dir.up.log" 2>&1 &
    UP_PID=$!
    bench_track "$UP_PID"
    bench_wait_file "$dir/endpoints.json" 30
    API="$(jq -r .api "$dir/endpoints.json")"
    ROUTER_HTTP="$(jq -r .router_http "$dir/endpoints.json")"
    ROUTER_GRPC="$(jq -r .router_grpc "$dir/endpoints.json")"
    bench_wait_http "$ROUTER_HTTP/v2/health/live" 30 "$UP_PID"
}

# bench_wait_servers DATA_DIR SECONDS: until every Server has all its replicas ready; then records
# the replica pids in AGENT_PIDS (and tracks them for cleanup) and the first replica's http address
# in AGENT_HTTP.
bench_wait_servers() {
    local dir="$1" deadline=$((SECONDS + $2)) json
    while :; do
        json="$("$BIN" get servers --data-dir "$dir" -o json 2>/dev/null || true)"
        if [[ -n "$json" ]] && jq -e 'length > 0 and all(.[]; .ready_replicas >= .desired_replicas
                and ([.replicas[] | select(.state == "Ready" and .pid != null)] | length) >= .desired_replicas)' \
                <<<"$json" >/dev/null; then
            break
        fi
        ((SECONDS < deadline)) || bench_die "servers not ready within $2 s: $json"
        sleep 0.2
    done
    mapfile -t AGENT_PIDS < <(jq -r '.[].replicas[] | select(.state == "Ready") | .pid' <<<"$json")
    AGENT_HTTP="$(jq -r '[.[].replicas[] | select(.state == "Ready") | .http][0]' <<<"$json")"
    [[ "$AGENT_HTTP" == http* ]] || AGENT_HTTP="http://$AGENT_HTTP"
    local p
    for p in "${AGENT_PIDS[@]}"; do bench_track "$p"; done
}

# bench_wait_models DATA_DIR COUNT SECONDS [STATE...]: until COUNT models are in one of the given
# states (default ModelAvailable). Prints the count per state when it gives up.
bench_wait_models() {
    local dir="$1" count="$2" deadline=$((SECONDS + $3)) states json n
    shift 3
    states="$(printf '%s\n' "${@:-ModelAvailable}" | jq -R . | jq -sc .)"
    while :; do
        json="$("$BIN" get models --data-dir "$dir" -o json 2>/dev/null || echo '[]')"
        n="$(jq --argjson s "$states" '[.[] | select(.state as $x | $s | index($x))] | length' <<<"$json")"
        ((n >= count)) && return 0
        if ((SECONDS >= deadline)); then
            bench_log "models not settled within $3 s: $(jq -c 'group_by(.state) | map({(.[0].state): length}) | add' <<<"$json")"
            return 1
        fi
        sleep 0.5
    done
}

# The runtime on its own: bench_runtime HTTP_PORT GRPC_PORT [MODEL...]; sets RT_PID.
bench_runtime() {
    local http="$1" grpc="$2" loads=()
    shift 2
    local m
    for m in "$@"; do loads+=(--load "$m"); done
    "$BIN" runtime --repository "$BENCH_ROOT/examples/models" "${loads[@]}" \
        --http-addr "127.0.0.1:$http" --grpc-addr "127.0.0.1:$grpc" >"$BENCH_TMP/runtime-$http.log" 2>&1 &
    RT_PID=$!
    bench_track "$RT_PID"
    bench_wait_http "http://127.0.0.1:$http/v2/health/ready" 30 "$RT_PID"
}

# nginx as a plain reverse proxy (1 worker, keepalive upstream, no access log; grpc_pass for
# gRPC) in front of a runtime: bench_nginx RT_HTTP RT_GRPC sets NGX_PORT, NGX_GRPC_PORT,
# NGX_MASTER and NGX_WORKER.
bench_nginx() {
    local dir="$BENCH_TMP/nginx-$1"
    NGX_PORT="$(bench_free_port)" NGX_GRPC_PORT="$(bench_free_port)"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # Connections stay open for the whole run, as coscale's do (the default closes a client
    # connection after 1,000 requests; h2load does not reconnect).
    keepalive_requests 100000000;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    upstream runtime {
        server 127.0.0.1:$1;
        keepalive 128;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / {
            proxy_pass http://runtime;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    upstream runtime_grpc {
        server 127.0.0.1:$2;
        keepalive 128;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$NGX_GRPC_PORT http2;
        location / {
            grpc_pass grpc://runtime_grpc;
        }
    }
}
EOF
    nginx -t -q -p "$dir" -c "$dir/nginx.conf"
    nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 &
    NGX_MASTER=$!
    bench_track "$NGX_MASTER"
    bench_wait_http "http://127.0.0.1:$NGX_PORT/v2/health/ready" 15 "$NGX_MASTER"
    NGX_WORKER="$(pgrep -P "$NGX_MASTER" | head -1)"
    [[ -n "$NGX_WORKER" ]] || bench_die "no nginx worker under master $NGX_MASTER"
}

# HAProxy in TCP mode (layer 4: each client connection gets its own connection to the runtime
# and the bytes are copied both ways, nothing parsed; one thread) in front of a runtime, the
# cheapest kind of proxy hop there is: bench_haproxy RT_HTTP RT_GRPC sets HAP_PORT,
# HAP_GRPC_PORT and HAP_PID.
bench_haproxy() {
    local dir="$BENCH_TMP/haproxy-$1"
    HAP_PORT="$(bench_free_port)" HAP_GRPC_PORT="$(bench_free_port)"
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
listen rest
    bind 127.0.0.1:$HAP_PORT
    server runtime 127.0.0.1:$1
listen grpc
    bind 127.0.0.1:$HAP_GRPC_PORT
    server runtime 127.0.0.1:$2
EOF
    haproxy -c -q -f "$dir/haproxy.cfg"
    haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
    HAP_PID=$!
    bench_track "$HAP_PID"
    bench_wait_http "http://127.0.0.1:$HAP_PORT/v2/health/ready" 15 "$HAP_PID"
}

# --- load generators (each prints one line:
#   RESULT requests=N duration_us=N rps=X p50_us=X p99_us=X mean_us=X errors=N non2xx=N) ---

# V2 REST infer of MODEL at BASE_URL with wrk and bench/infer.lua (BENCH_ROWS×4 FP32, one row
# by default), closed loop, threads = min(conns, 2): bench_wrk BASE_URL MODEL CONNS SECONDS
bench_wrk() {
    wrk -t "$(($3 < 2 ? $3 : 2))" -c "$3" -d "${4}s" --timeout 5s -s "$BENCH_ROOT/bench/infer.lua" \
        "$1/v2/models/$2/infer" | grep '^RESULT'
}

BENCH_INFER_PATH=/inference.GRPCInferenceService/ModelInfer

# The REST runs' request as a gRPC message (length-prefixed ModelInferRequest, BENCH_ROWS×4 FP32
# in fp32_contents, one row by default), one file per model: bench_grpc_bodies DIR MODEL...
# writes DIR/grpc-MODEL.bin.
bench_grpc_bodies() {
    python3 - "$@" <<'PY'
import os, struct, sys
def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])
def field(num, payload):  # length-delimited field
    return varint(num << 3 | 2) + varint(len(payload)) + payload
rows = int(os.environ.get("BENCH_ROWS", "1"))
for model in sys.argv[2:]:
    contents = field(6, struct.pack("<4f", 6.7, 3.0, 5.2, 2.3) * rows)  # fp32_contents
    tensor = field(1, b"input") + field(2, b"FP32") + field(3, varint(rows) + varint(4)) + field(5, contents)
    message = field(1, model.encode()) + field(5, tensor)  # model_name, inputs
    with open(f"{sys.argv[1]}/grpc-{model}.bin", "wb") as f:
        f.write(b"\0" + struct.pack(">I", len(message)) + message)
PY
}

# One gRPC ModelInfer answer as text that is the same from every server when they agree: the
# answer message's bytes (hex) and its grpc-status: bench_grpc_answer BASE_URL BODY_FILE
bench_grpc_answer() {
    local headers="$BENCH_TMP/answer-headers"
    curl -fsS --max-time 5 --http2-prior-knowledge -H 'content-type: application/grpc' \
        -H 'te: trailers' --data-binary "@$2" -D "$headers" "$1$BENCH_INFER_PATH" | od -An -tx1 | tr -d ' \n'
    printf ' %s' "$(tr -d '\r' <"$headers" | grep -i '^grpc-status:' || echo 'grpc-status: missing')"
}

# The DATA bytes of one good answer as h2load counts them (to tell answers from error statuses,
# which carry no message): bench_grpc_answer_bytes BASE_URL BODY_FILE
bench_grpc_answer_bytes() {
    h2load -n 1 -c 1 -H 'content-type: application/grpc' -H 'te: trailers' -d "$2" "$1$BENCH_INFER_PATH" |
        awk '/^traffic:/ { gsub(/[()]/, "", $(NF - 1)); print $(NF - 1) }'
}

# gRPC ModelInfer with h2load, closed loop, STREAMS calls at a time per connection, threads =
# min(conns, 2); latencies from its per-request log; non2xx counts HTTP statuses other than 2xx
# and answers without a message (a gRPC error status), from the DATA bytes against OK_BYTES:
# bench_h2load BASE_URL BODY_FILE CONNS SECONDS STREAMS OK_BYTES
bench_h2load() {
    local log="$BENCH_TMP/h2load-requests.tsv" summary
    rm -f "$log" # h2load appends to its log
    summary="$(h2load -c "$3" -t "$(($3 < 2 ? $3 : 2))" -m "$5" -D "$4" -H 'content-type: application/grpc' \
        -H 'te: trailers' -d "$2" --log-file="$log" "$1$BENCH_INFER_PATH")"
    sort -n -k3,3 "$log" | awk -F'\t' -v ok_bytes="$6" -v summary="$summary" '
        { lat[NR] = $3; sum += $3 }
        END {
            n = split(summary, lines, "\n")
            for (i = 1; i <= n; i++) {
                split(lines[i], f, /[ ,]+/)
                if (lines[i] ~ /^finished in/) { rps = f[4] + 0 }
                if (lines[i] ~ /^requests:/) { done = f[6]; failed = f[10] + f[12] + f[14] }
                if (lines[i] ~ /^status codes:/) { ok2xx = f[3] }
                if (lines[i] ~ /^traffic:/) { data = lines[i]; sub(/.*\(/, "", data); sub(/\).*/, "", data) }
            }
            # (a call cut off at the end of the run can add part of an answer to the traffic)
            answered = ok_bytes > 0 ? int(data / ok_bytes) : done
            good = ok2xx < answered ? ok2xx : answered
            non2xx = good < done ? done - good : 0
            printf "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%.1f p99_us=%.1f mean_us=%.1f errors=%d non2xx=%d\n",
                done, (rps > 0 ? done / rps * 1e6 : 0), rps, lat[int(NR * 0.5 + 0.5)], lat[int(NR * 0.99 + 0.5)],
                (NR ? sum / NR : 0), failed, non2xx
        }'
}
