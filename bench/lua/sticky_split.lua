-- Benchmark variant 4: the sticky canary split a user would hand-write in Envoy's Lua filter
-- instead of installing veer. Same job as veer's decision for the benchmark's route:
--   * drop a client-sent x-veer-route (a client must not pick its variant), only when present;
--   * override: "x-canary: always" -> canary;
--   * two A/B rules (Firefox user agents, or paths under /api/); anything else -> primary;
--   * sticky bucket: FNV-1a(revision .. ":" .. seed) mod 10000 against the weight, the seed
--     taken from the affinity cookie, or from x-request-id for a new user;
--   * set x-veer-route: canary for the header routes (primary is its absence, as for veer:
--     any request-header change makes Envoy match the route again), and Set-Cookie on the
--     first visit.
-- What it does not do, because Envoy's Lua has no API for it: sign the cookie (no HMAC) and
-- emit its own per-variant metrics (a Lua user reads the primary/canary cluster stats instead).

local COOKIE_NAME = "flagger-cookie"
local ROUTE_HEADER = "x-veer-route"
local REVISION = "7f9c2ba"
local WEIGHT = 3000 -- canary share in basis points
local SET_COOKIE_ATTRS = "; Max-Age=86400; Path=/; HttpOnly; SameSite=Lax"

local bxor, lshift, tobit = bit.bxor, bit.lshift, bit.tobit

-- 32-bit FNV-1a. h * 16777619 is done as (h << 24) + h * 403 so that the product stays exact
-- in a double before tobit() wraps it to 32 bits.
local function fnv1a(s)
  local h = tobit(2166136261)
  for i = 1, #s do
    h = bxor(h, s:byte(i))
    h = tobit(lshift(h, 24) + h * 403)
  end
  return h % 4294967296
end

local function cookie_value(header, name)
  if header == nil then
    return nil
  end
  for k, v in header:gmatch("%s*([^=;]+)=([^;]*)") do
    if k == name then
      return v
    end
  end
  return nil
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  if headers:get(ROUTE_HEADER) ~= nil then
    headers:remove(ROUTE_HEADER)
  end

  local variant
  if headers:get("x-canary") == "always" then
    variant = "canary"
  else
    local ua = headers:get("user-agent") or ""
    local path = headers:get(":path") or ""
    if not (ua:find("Firefox", 1, true) or path:sub(1, 5) == "/api/") then
      variant = "primary"
    else
      local seed = cookie_value(headers:get("cookie"), COOKIE_NAME)
      if seed == nil or not seed:match("^%x%x%x%x%x%x%x%x$") then
        seed = (headers:get("x-request-id") or ""):sub(1, 8)
        request_handle:streamInfo():dynamicMetadata():set(
          "bench.sticky", "set_cookie", COOKIE_NAME .. "=" .. seed .. SET_COOKIE_ATTRS)
      end
      if fnv1a(REVISION .. ":" .. seed) % 10000 < WEIGHT then
        variant = "canary"
      else
        variant = "primary"
      end
    end
  end
  if variant == "canary" then
    headers:add(ROUTE_HEADER, variant)
  end
end

function envoy_on_response(response_handle)
  local meta = response_handle:streamInfo():dynamicMetadata():get("bench.sticky")
  if meta ~= nil and meta.set_cookie ~= nil then
    response_handle:headers():add("set-cookie", meta.set_cookie)
  end
end
