-- bench/etcd_txn.lua: wrk baseline for bench_etcd: the same /v3/kv/txn JSON that atrest sends:
-- IF create_revision(k) == 0 THEN put(k, 1 KiB) ELSE range(k), with a fresh key per request.
dofile((os.getenv("ATREST_BENCH_DIR") or "bench") .. "/etcd_b64.lua")
local value = os.getenv("ATREST_BENCH_VALUE")
local prefix = os.getenv("ATREST_BENCH_PREFIX") or "wrk/txn/"
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
  local k = b64(prefix .. tid .. "-" .. n)
  return wrk.format(nil, "/v3/kv/txn", nil,
    '{"compare":[{"target":"CREATE","result":"EQUAL","key":"' .. k ..
    '","create_revision":"0"}],"success":[{"request_put":{"key":"' .. k ..
    '","value":"' .. value .. '"}}],"failure":[{"request_range":{"key":"' .. k .. '"}}]}')
end
