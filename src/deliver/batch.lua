
-- The batch: many calls of `one` (above) in one round trip, each as if alone.
-- ARGV[1] the number of calls; then per call: its number of keys, its number of
--         arguments, its arguments. KEYS: every call's keys, in call order.
-- Returns one reply per call; a call that failed replies {'!error', message},
-- and the calls before and after it stand (a script is never rolled back).
-- The script above defines `one(KEYS, ARGV, now, defer, shared)`, one call,
-- and `prepare(calls, shared)`, which reads once what every call would read
-- (a failed `prepare` leaves `shared` empty: each call reads for itself).
-- The batch's time in ms, read once (TIME) when a call first asks.
local now_ms
local function now()
  if not now_ms then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_ms
end
local later, order = {}, {}
local call = 0
-- A command run once at the end with every call's value (an XACK of many ids).
local function defer(command, key, first, value)
  local by_key = later[command]
  if not by_key then
    by_key = {}
    later[command] = by_key
  end
  local by_first = by_key[key]
  if not by_first then
    by_first = {}
    by_key[key] = by_first
  end
  local job = by_first[first or '']
  if not job then
    job = {command = command, key = key, first = first, values = {}, calls = {}}
    by_first[first or ''] = job
    order[#order + 1] = job
  end
  job.values[#job.values + 1] = value
  job.calls[#job.calls + 1] = call
end
-- An error that concerns the server, not the call (a primary demoted by a
-- failover, a replica without its primary, a Redis still loading): the whole
-- batch fails with it, as a single call's script would, so that the caller
-- sees Redis unreachable (and waits for it, or finds the new primary) rather
-- than a refusal of its call. Nothing was written before it: such a server
-- takes no write.
local SERVER = {'READONLY', 'MASTERDOWN', 'LOADING', 'TRYAGAIN', 'CLUSTERDOWN'}
local function failure(e)
  local message = type(e) == 'table' and e.err or tostring(e)
  for _, code in ipairs(SERVER) do
    if string.sub(message, 1, #code + 1) == code .. ' ' then
      error({err = message})
    end
  end
  return {'!error', message}
end
local calls = {}
local k, a = 0, 2
for c = 1, tonumber(ARGV[1]) do
  local nkeys, nargs = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local keys, args = {}, {}
  for i = 1, nkeys do
    keys[i] = KEYS[k + i]
  end
  for i = 1, nargs do
    args[i] = ARGV[a + 1 + i]
  end
  k, a = k + nkeys, a + 2 + nargs
  calls[c] = {keys = keys, args = args}
end
-- What the calls can share is read once for all of them (see `prepare` above).
local shared = {}
local prepared = pcall(prepare, calls, shared)
if not prepared then
  shared = {}
end
local replies = {}
for c, one_call in ipairs(calls) do
  call = c
  local ok, reply = pcall(one, one_call.keys, one_call.args, now, defer, shared)
  replies[c] = ok and reply or failure(reply)
end
for _, job in ipairs(order) do
  local args = {}
  if job.first then
    args[1] = job.first
  end
  for _, v in ipairs(job.values) do
    args[#args + 1] = v
  end
  local ok, e = pcall(redis.call, job.command, job.key, unpack(args))
  if not ok then
    for _, c in ipairs(job.calls) do
      replies[c] = failure(e)
    end
  end
end
return replies
