-- The picoapi 1.0.4 master's registration as it accepts it: GET /register with the JSON
-- body its services build (its route is declared without a method, so FastAPI makes it
-- GET-only; the PUT its own services send gets 405).
--
--   wrk -t1 -c64 -d10s --latency -s bench/lua/picoapi_register.lua URL -- PREFIX [INTERVAL]
--
-- Each request registers a new name, PREFIX-T-N (PREFIX random per run, T the wrk thread,
-- N its counter). The body is bench/workloads.py `picoapi_body(N)`: with a healthcheck
-- INTERVAL seconds away (picoapi starts a thread per registration that checks at once,
-- then sleeps INTERVAL: what its registration costs), or, with INTERVAL "none", no
-- healthcheck at all (no thread: the route alone).

local threads_set_up = 0

function setup(thread)
  threads_set_up = threads_set_up + 1
  thread:set("thread_id", threads_set_up)
end

local prefix, healthcheck
local counter = 0
local headers = { ["Content-Type"] = "application/json" }

local BODY = '{"name":"%s","tags":["grp-%d","bench","zone-%d"],"host":"127.0.0.1",'
  .. '"port":"%d","metadata":null,"healthcheck":%s}'

function init(args)
  prefix = args[1] or "wrk"
  local interval = args[2] or "3600"
  if interval == "none" then
    healthcheck = "null"
  else
    healthcheck = string.format('{"url":"http://127.0.0.1:9/health","interval":%d}',
      tonumber(interval))
  end
end

function request()
  counter = counter + 1
  local n = counter
  local name = string.format("%s-%d-%d", prefix, thread_id, n)
  local body = string.format(BODY, name, n % 1000, n % 3, 20000 + n % 40000, healthcheck)
  return wrk.format("GET", "/register", headers, body)
end
