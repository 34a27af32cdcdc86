-- wrk script for the data-plane benchmark: POSTs one V2 inference request (the model is in the
-- URL path given to wrk), a BENCH_ROWS×4 FP32 tensor (one row unless BENCH_ROWS says more), and
-- prints one parseable line at the end:
--   RESULT requests=N duration_us=N rps=X p50_us=X p99_us=X mean_us=X errors=N non2xx=N
local rows = tonumber(os.getenv("BENCH_ROWS") or "1")
local data = {}
for i = 1, rows do data[i] = "6.7,3.0,5.2,2.3" end
wrk.method = "POST"
wrk.body = string.format('{"inputs":[{"name":"input","shape":[%d,4],"datatype":"FP32","data":[%s]}]}',
  rows, table.concat(data, ","))
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%.1f p99_us=%.1f mean_us=%.1f errors=%d non2xx=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect + e.read + e.write + e.timeout, e.status))
end
