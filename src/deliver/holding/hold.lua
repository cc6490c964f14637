-- Holds a direct event for a user who has no subscription yet.
-- KEYS[1] the user's held events (sorted set: event id -> expiry ms)
-- KEYS[2] fields of held events (hash: event id -> {"user":...,"fields":[...]})
-- KEYS[3] every held event by expiry (sorted set), for the sweep
-- KEYS[4] the count of held events that expired unsent
-- ARGV[1] the event id
-- ARGV[2] when the event expires (its TTL is over), unix ms
-- ARGV[3] at most this many live held events per user
-- ARGV[4] the JSON record
-- Returns 'held' (also when it was held already), 'expired' (counted, not
-- held) or 'full' (the user has the most live held events already).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
-- Only live events count against the cap; the expired ones are the sweep's to
-- count (it finds them in KEYS[3]), so they are only forgotten here.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 'held'
end
if tonumber(ARGV[2]) <= now then
  redis.call('INCR', KEYS[4])
  return 'expired'
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 'full'
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
-- The user's set goes away by itself once its last event expired.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.max(tonumber(last[2]), tonumber(ARGV[2])) + 1000)
return 'held'
