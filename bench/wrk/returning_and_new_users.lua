-- wrk traffic for the CPU benchmark: a fixed cycle of requests in which one in
-- VEER_BENCH_NEW_EVERY comes from a new user (no affinity cookie) and the rest from returning
-- users whose cookies were collected from the gateway under test (VEER_BENCH_COOKIES: one
-- "name=value" per line; 1000 of them, so a returning user's cookie comes back only after
-- ~800 other users' requests). Requests are built once in init(), so wrk's own cost per
-- request stays small and the same for every variant.

local requests = {}
local n = 0

function init(args)
  local cookies = {}
  local file = os.getenv("VEER_BENCH_COOKIES")
  if file ~= nil and file ~= "" then
    for line in io.lines(file) do
      if line ~= "" then cookies[#cookies + 1] = line end
    end
  end
  local new_every = tonumber(os.getenv("VEER_BENCH_NEW_EVERY") or "5")
  for i = 1, 1000 do
    local headers = {
      ["Host"] = "app.example.com",
      ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
      ["Accept"] = "application/json",
    }
    if #cookies > 0 and i % new_every ~= 0 then
      headers["Cookie"] = "session=s" .. i .. "; theme=dark; " .. cookies[(i % #cookies) + 1]
    end
    requests[i] = wrk.format("GET", "/api/items?page=" .. (i % 10), headers)
  end
end

function request()
  n = n % #requests + 1
  return requests[n]
end
