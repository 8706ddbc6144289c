-- Fixed-rate (open-loop-ish) wrk script for scripts/loadtest.sh (scenario small-half).
--
-- wrk cannot pace and wrk2 is not packaged here, so this script paces with wrk's `delay()` hook:
-- every wrk thread keeps one schedule of request slots, one every LT_THREADS / LT_RATE seconds,
-- and hands the next free slot to whichever connection is ready to send; `delay()` returns the
-- milliseconds until that slot. The aggregate rate is thus fixed (LT_RATE requests/s) as long as
-- a connection is free when a slot comes due; a slot more than LATE_LIMIT_MS overdue (every
-- connection busy, or wrk itself kept off the CPU) is dropped and counted as missed, instead of
-- being sent later in a catch-up burst.
--
-- Limits: wrk's timers tick in whole milliseconds, so requests leave in groups of about
-- LT_RATE / 1000 at each millisecond; latency is measured by wrk from when a request is written,
-- not from its slot (no coordinated-omission correction; `missed` shows when that matters).
--
-- Environment: LT_RATE (requests/s, all threads together; required), LT_THREADS (wrk -t, default
-- 1). Everything else (body, Connection: close, the LT_RESULT line) comes from wrk.lua next to
-- this file; done() adds one line: LT_PACED rate=<asked> missed=<slots dropped>.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "wrk.lua")

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } lt_timespec;
  int clock_gettime(int clk_id, lt_timespec *tp);
]]
local CLOCK_MONOTONIC = 1 -- Linux clock id
local ts = ffi.new("lt_timespec")
local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local rate = tonumber(os.getenv("LT_RATE") or "")
local threads = tonumber(os.getenv("LT_THREADS") or "1") or 1
if rate == nil or rate <= 0 then
  error("paced.lua: LT_RATE (requests per second) must be set and > 0")
end
local interval_ms = 1000 * threads / rate -- slot spacing within one thread
-- A slot more than this far in the past found no free connection: drop it instead of sending
-- a burst later. 2 ms: wrk's timer granularity (1 ms) plus a loop iteration's jitter.
local LATE_LIMIT_MS = 2

local next_slot = nil
missed = 0 -- global: read by done() through thread:get

function delay()
  local now = now_ms()
  if next_slot == nil then
    next_slot = now
  elseif next_slot < now - LATE_LIMIT_MS then
    local behind = math.floor((now - next_slot) / interval_ms)
    missed = missed + behind
    next_slot = next_slot + behind * interval_ms
  end
  local wait = next_slot - now
  next_slot = next_slot + interval_ms
  if wait <= 0 then
    return 0
  end
  return math.floor(wait)
end

local all_threads = {}
function setup(thread)
  table.insert(all_threads, thread)
end

local base_done = done
function done(summary, latency, requests)
  base_done(summary, latency, requests)
  local m = 0
  for _, t in ipairs(all_threads) do
    m = m + (tonumber(t:get("missed")) or 0)
  end
  io.write(string.format("LT_PACED rate=%d missed=%d\n", rate, m))
end
