-- Idempotent publish: add an event to its stream (or, when its deliver_at is
-- still ahead, to the partition's schedule) unless its id was seen.
-- KEYS[1] the partition's stream
-- KEYS[2] the event's dedup record (same hash tag as the stream)
-- KEYS[3] the partition's schedule (sorted set: event id -> deliver_at ms)
-- KEYS[4] the fields of scheduled events (hash: event id -> JSON array)
-- ARGV[1] digest of the event's content
-- ARGV[2] dedup window in milliseconds
-- ARGV[3] deliver_at in unix milliseconds, 0 for none
-- ARGV[4] the event id
-- ARGV[5..] the entry's field/value pairs
-- Returns {outcome, stream id}: outcome is 'added', 'scheduled' (stream id
-- 'scheduled'), 'duplicate' (same content; the original stream id, or
-- 'scheduled') or 'conflict' (same event id, other content).
local seen = redis.call('GET', KEYS[2])
if seen then
  local digest, id = string.match(seen, '^(%S+) (%S+)$')
  if digest == ARGV[1] then
    return {'duplicate', id}
  end
  return {'conflict', id}
end
local deliver_at = tonumber(ARGV[3])
if deliver_at > 0 then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  if deliver_at > now then
    redis.call('ZADD', KEYS[3], deliver_at, ARGV[4])
    redis.call('HSET', KEYS[4], ARGV[4], cjson.encode({unpack(ARGV, 5)}))
    redis.call('SET', KEYS[2], ARGV[1] .. ' scheduled', 'PX', ARGV[2])
    return {'scheduled', 'scheduled'}
  end
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 5))
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. id, 'PX', ARGV[2])
return {'added', id}
