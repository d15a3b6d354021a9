-- wrk traffic for the CPU benchmark, in its two mixes. Returning users send the affinity
-- cookies collected from the gateway under test (VEER_BENCH_COOKIES: one "name=value" per
-- line, a user each); new users send none. Requests are built once in init(), so wrk's own
-- cost per request stays small and the same for every variant.
--
-- The 1,000-user mix (VEER_BENCH_MIX unset or "1k"): a fixed cycle of 1,000 requests in which
-- one in VEER_BENCH_NEW_EVERY comes from a new user and the rest from the returning users in
-- turn, so a returning user's cookie comes back only after ~800 other users' requests.
--
-- The Zipf mix (VEER_BENCH_MIX=zipf, issue 13): the user of rank k visits in proportion to
-- k^-s (VEER_BENCH_ZIPF_S, default 1) over every user in the file (100,000), and one request
-- in VEER_BENCH_NEW_EVERY is from a new user; 30,000 requests are drawn from VEER_BENCH_SEED,
-- so the variants measured in one round see the same users in the same order.

local requests = {}
local n = 0

local function read_cookies()
  local cookies = {}
  local file = os.getenv("VEER_BENCH_COOKIES")
  if file ~= nil and file ~= "" then
    for line in io.lines(file) do
      if line ~= "" then cookies[#cookies + 1] = line end
    end
  end
  return cookies
end

-- Which user (an index into the cookies) each returning request comes from.
local function cycle(users)
  local i = 0
  return function()
    i = i + 1
    return (i % users) + 1
  end
end

local function zipf(users)
  local s = tonumber(os.getenv("VEER_BENCH_ZIPF_S") or "1")
  math.randomseed(tonumber(os.getenv("VEER_BENCH_SEED") or "1"))
  local cdf, total = {}, 0
  for k = 1, users do
    total = total + k ^ (-s)
    cdf[k] = total
  end
  return function()
    -- The user of the smallest rank whose cumulative weight reaches the draw.
    local x = math.random() * total
    local lo, hi = 1, users
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < x then lo = mid + 1 else hi = mid end
    end
    return lo
  end
end

function init(args)
  local cookies = read_cookies()
  local new_every = tonumber(os.getenv("VEER_BENCH_NEW_EVERY") or "5")
  local is_zipf = os.getenv("VEER_BENCH_MIX") == "zipf"
  local length = is_zipf and 30000 or 1000
  local next_user = nil
  if #cookies > 0 then
    next_user = is_zipf and zipf(#cookies) or cycle(#cookies)
  end
  for i = 1, length do
    local headers = {
      ["Host"] = "app.example.com",
      ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
      ["Accept"] = "application/json",
    }
    if next_user ~= nil and i % new_every ~= 0 then
      local user = next_user()
      headers["Cookie"] = "session=s" .. (is_zipf and user or i) .. "; theme=dark; " .. cookies[user]
    end
    requests[i] = wrk.format("GET", "/api/items?page=" .. (i % 10), headers)
  end
end

function request()
  n = n % #requests + 1
  return requests[n]
end
