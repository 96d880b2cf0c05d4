-- bench/etcd_put.lua: wrk baseline for bench_etcd: the same /v3/kv/put JSON that atrest sends
-- (fresh key per request, 1 KiB value given base64-encoded in ATREST_BENCH_VALUE).
dofile((os.getenv("ATREST_BENCH_DIR") or "bench") .. "/etcd_b64.lua")
local value = os.getenv("ATREST_BENCH_VALUE")
local prefix = os.getenv("ATREST_BENCH_PREFIX") or "wrk/put/"
local n = 0
local nthreads = 0
function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  n = n + 1
  local key = b64(prefix .. tid .. "-" .. n)
  return wrk.format(nil, "/v3/kv/put", nil,
    '{"key":"' .. key .. '","value":"' .. value .. '"}')
end
