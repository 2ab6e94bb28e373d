-- PUT /v1/services/{id}: every request registers a new service.
--
--   wrk -t1 -c64 -d10s --latency -s bench/lua/put_services.lua URL -- PREFIX [INTERVAL]
--
-- The id is PREFIX-T-N: PREFIX is random per run (bench/wrk.py draws it), so a rerun
-- against the same store still creates new services; T is the wrk thread, N a counter of
-- that thread. The body is what bench/workloads.py `registration(N)` builds (a sidecar's
-- registration: tags grp-K with K = N mod 1000, zone-Z, meta, an http check INTERVAL
-- away, 1h by default, so no check runs during the measurement), sent as JSON.
-- (wrk calls request() once before the run to inspect it and drops what it returns, so
-- N = 1 is never sent: the first id on the wire ends in -2.)

local threads_set_up = 0

function setup(thread)
  -- runs in wrk's main Lua state, once per thread, before the threads start
  threads_set_up = threads_set_up + 1
  thread:set("thread_id", threads_set_up)
end

local prefix, interval
local counter = 0
local headers = { ["Content-Type"] = "application/json" }

-- the same fields and order as workloads.registration()
local BODY = '{"id":"%s","name":"svc-%d","address":"127.0.0.1","port":%d,"scheme":"http",'
  .. '"tags":["grp-%d","bench","zone-%d"],"meta":{"team":"data","version":"1.4.2"},'
  .. '"check":{"url":"http://127.0.0.1:9/health","interval":"%s","timeout":"2s",'
  .. '"failures_before_critical":1,"successes_before_passing":1,"deregister_after":"0"}}'

function init(args)
  prefix = args[1] or "wrk"
  interval = args[2] or "1h"
end

function request()
  counter = counter + 1
  local n = counter
  local id = string.format("%s-%d-%d", prefix, thread_id, n)
  local body = string.format(BODY, id, n % 100, 20000 + n % 40000, n % 1000, n % 3, interval)
  return wrk.format("PUT", "/v1/services/" .. id, headers, body)
end
