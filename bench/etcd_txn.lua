-- bench/etcd_txn.lua: wrk baseline for bench_etcd: the same /v3/kv/txn JSON that atrest sends:
-- IF create_revision(k) == 0 THEN put(k, 1 KiB) ELSE range(k), with a fresh key per request.
dofile((os.getenv("ATREST_BENCH_DIR") or "bench") .. "/etcd_common.lua")
bench_setup("wrk/txn/")
function request()
  local k = next_key()
  return wrk.format(nil, "/v3/kv/txn", nil,
    '{"compare":[{"target":"CREATE","result":"EQUAL","key":"' .. k ..
    '","create_revision":"0"}],"success":[{"request_put":{"key":"' .. k ..
    '","value":"' .. value .. '"}}],"failure":[{"request_range":{"key":"' .. k .. '"}}]}')
end
