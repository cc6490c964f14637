-- Moves the due scheduled events of one partition into its stream, earliest
-- deliver_at first. One script, so two schedulers never move one event twice.
-- KEYS[1] the partition's schedule (sorted set: event id -> deliver_at ms)
-- KEYS[2] the fields of scheduled events (hash: event id -> JSON array)
-- KEYS[3] the partition's stream
-- ARGV[1] at most this many events per call
-- Returns the number of events moved.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  local fields = redis.call('HGET', KEYS[2], id)
  if fields then
    redis.call('XADD', KEYS[3], '*', unpack(cjson.decode(fields)))
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return #due
