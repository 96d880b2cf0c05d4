-- bench/etcd_common.lua: what the wrk scripts share (base64, the value, fresh keys per thread);
-- loaded with dofile.
local chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
function b64(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return chars:sub(c + 1, c + 1)
  end) .. ({'', '==', '='})[#data % 3 + 1])
end

-- The 1 KiB value (base64) from ATREST_BENCH_VALUE; wrk's per-thread setup and headers.
value = os.getenv("ATREST_BENCH_VALUE")
local prefix, n, nthreads = nil, 0, 0
function bench_setup(default_prefix)
  prefix = os.getenv("ATREST_BENCH_PREFIX") or default_prefix
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end
-- A fresh key per request: <prefix><thread>-<n>, base64.
function next_key()
  n = n + 1
  return b64(prefix .. tid .. "-" .. n)
end
