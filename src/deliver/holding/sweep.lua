-- Drops held events whose TTL is over and counts them. The per-user sets are
-- not touched (a script may only use the keys it is given): each forgets its
-- expired events at the user's next hold, and expires whole after its last.
-- KEYS[1] every held event by expiry (sorted set)
-- KEYS[2] fields of held events (hash)
-- KEYS[3] the count of held events that expired unsent
-- ARGV[1] at most this many per call
-- Returns how many expired.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
end
if #due > 0 then
  redis.call('INCRBY', KEYS[3], #due)
end
return #due
