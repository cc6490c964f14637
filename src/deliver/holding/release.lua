-- Moves a user's held events back into the stream (the user has a
-- subscription now); the ones whose TTL is over are dropped and counted.
-- KEYS[1] the user's held events (sorted set: event id -> expiry ms)
-- KEYS[2] fields of held events (hash)
-- KEYS[3] every held event by expiry (sorted set)
-- KEYS[4] the count of held events that expired unsent
-- KEYS[5] the partition's stream
-- Returns {moved, expired}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local held = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local moved, expired = 0, 0
for i = 1, #held, 2 do
  local id, expires = held[i], tonumber(held[i + 1])
  local record = redis.call('HGET', KEYS[2], id)
  -- No record: the sweep dropped (and counted) it already.
  if record then
    if expires > now then
      redis.call('XADD', KEYS[5], '*', unpack(cjson.decode(record).fields))
      moved = moved + 1
    else
      expired = expired + 1
    end
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
  end
end
redis.call('DEL', KEYS[1])
if expired > 0 then
  redis.call('INCRBY', KEYS[4], expired)
end
return {moved, expired}
