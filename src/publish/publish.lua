-- Idempotent publish: add an event to its stream unless its id was seen.
-- KEYS[1] the partition's stream
-- KEYS[2] the event's dedup record (same hash tag as the stream)
-- ARGV[1] digest of the event's content
-- ARGV[2] dedup window in milliseconds
-- ARGV[3..] the entry's field/value pairs
-- Returns {outcome, stream id}: outcome is 'added', 'duplicate' (same content,
-- the original id) or 'conflict' (same event id, other content).
local seen = redis.call('GET', KEYS[2])
if seen then
  local digest, id = string.match(seen, '^(%S+) (%S+)$')
  if digest == ARGV[1] then
    return {'duplicate', id}
  end
  return {'conflict', id}
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. id, 'PX', ARGV[2])
return {'added', id}
