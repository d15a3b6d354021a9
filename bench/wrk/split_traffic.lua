-- wrk traffic for the split-accuracy benchmark. Every request is a new visitor (no cookie).
-- VEER_BENCH_HOST: the Host header (one route per weight). VEER_BENCH_USER_IDS=1 adds a
-- distinct x-user-id per request (the route's stickyKey). The harness stops wrk once the
-- gateway has counted enough requests.

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local host = os.getenv("VEER_BENCH_HOST") or "localhost"
local user_ids = os.getenv("VEER_BENCH_USER_IDS") == "1"
local sent = 0
local plain = nil

function request()
  sent = sent + 1
  if user_ids then
    return wrk.format("GET", "/", { ["Host"] = host, ["x-user-id"] = "user-" .. tid .. "-" .. sent })
  end
  if plain == nil then
    plain = wrk.format("GET", "/", { ["Host"] = host })
  end
  return plain
end
