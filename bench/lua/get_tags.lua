-- GET /v1/services?tag=grp-K, K walking over GROUPS tags (default 1000), the order
-- scrambled (K = N * 7919 mod GROUPS), as bench/workloads.py's "tag" requests.
--
--   wrk -t1 -c64 -d10s --latency -s bench/lua/get_tags.lua URL -- [GROUPS]
--
-- The hello ceiling is sent the very same GETs.

local groups
local counter = 0

function init(args)
  groups = tonumber(args[1] or "1000")
end

function request()
  counter = counter + 1
  return wrk.format("GET", string.format("/v1/services?tag=grp-%d", (counter * 7919) % groups))
end
