-- bench/etcd_put.lua: wrk baseline for bench_etcd: the same /v3/kv/put JSON that atrest sends
-- (fresh key per request, 1 KiB value given base64-encoded in ATREST_BENCH_VALUE).
dofile((os.getenv("ATREST_BENCH_DIR") or "bench") .. "/etcd_common.lua")
bench_setup("wrk/put/")
function request()
  local key = next_key()
  return wrk.format(nil, "/v3/kv/put", nil,
    '{"key":"' .. key .. '","value":"' .. value .. '"}')
end
