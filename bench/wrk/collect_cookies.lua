-- Collects affinity cookies for the returning-user mixes: every request comes from a new user
-- (no cookie), and the "name=value" of each response's Set-Cookie is written, one per line, to
-- VEER_BENCH_COOKIES_OUT until VEER_BENCH_COOKIES_WANT are written; then the file is closed and
-- VEER_BENCH_COOKIES_OUT.done created, on which the harness stops wrk (wrk has no request
-- count). Run with one thread (one file). The harness checks the count and that they are
-- distinct.

local out = nil
local want = 0
local got = 0
local request_bytes = nil

function init(args)
  out = assert(io.open(assert(os.getenv("VEER_BENCH_COOKIES_OUT")), "w"))
  want = assert(tonumber(os.getenv("VEER_BENCH_COOKIES_WANT")))
  request_bytes = wrk.format("GET", "/api/items", {
    ["Host"] = "app.example.com",
    ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    ["Accept"] = "application/json",
  })
end

function request()
  return request_bytes
end

function response(status, headers, body)
  if got >= want then return end
  local sc = headers["set-cookie"] or headers["Set-Cookie"]
  if sc ~= nil then
    out:write(sc:match("^[^;]*"), "\n")
    got = got + 1
    if got >= want then
      out:close()
      assert(io.open(os.getenv("VEER_BENCH_COOKIES_OUT") .. ".done", "w")):close()
    end
  end
end
