-- wrk script of the API benchmark's closed loop (bench/api_closed.py).
--   BENCH_WRK_MODE=get:   GET the URL's path (the trivial endpoint).
--   BENCH_WRK_MODE=retry: POST /api/partner/v2/webhook-notifications/{id}/retry, walking the
--     "API-key notification-id" lines of BENCH_WRK_ITEMS; thread k of n takes items
--     k, k+n, k+2n..., wrapping around at the end.
-- done() prints one line "BENCH_JSON {...}": requests, duration, latency percentiles,
-- socket errors and the count of each HTTP status.

local threads = {}
local counter = 1

function setup(thread)
  thread:set("tid", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  mode = os.getenv("BENCH_WRK_MODE") or "get"
  statuses = {}
  if mode == "retry" then
    items = {}
    for line in io.lines(os.getenv("BENCH_WRK_ITEMS")) do
      local key, id = line:match("^(%S+) (%S+)$")
      if key then items[#items + 1] = {key, id} end
    end
    nthreads = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")
    index = tid - nthreads
  end
end

function request()
  if mode ~= "retry" then
    return wrk.format("GET", nil)
  end
  index = index + nthreads
  local item = items[((index - 1) % #items) + 1]
  return wrk.format("POST", "/api/partner/v2/webhook-notifications/" .. item[2] .. "/retry",
                    {["X-Api-Key"] = item[1]}, "")
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local seen = thread:get("statuses")
    if seen then
      for status, n in pairs(seen) do
        counts[tostring(status)] = (counts[tostring(status)] or 0) + n
      end
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    parts[#parts + 1] = string.format('"%s": %d', status, n)
  end
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d}, "statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    table.concat(parts, ", ")))
end
