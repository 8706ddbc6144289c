-- wrk script for scripts/loadtest.sh.
-- Environment: LT_BODY_FILE (POST this file's bytes as the body), LT_CONN_CLOSE=1 (send
-- `Connection: close`: a new connection per request). done() prints one machine-readable line.
local body_file = os.getenv("LT_BODY_FILE")
if body_file ~= nil and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-ndjson"
end
if os.getenv("LT_CONN_CLOSE") == "1" then
  wrk.headers["Connection"] = "close"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "LT_RESULT requests=%d duration_us=%d bytes=%d err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
