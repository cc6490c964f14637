-- The first half of an idempotent publish whose event id and ordering key fall
-- in different partitions: the id's dedup record lives in the id's own
-- partition, so that a publish of the same id with another key (another
-- partition) still finds it. The second half, publish.lua, runs in the
-- stream's partition with a dedup record of its own.
-- KEYS[1] the id's dedup record, in the id's partition
-- ARGV[1] digest of the event's content
-- ARGV[2] dedup window in milliseconds
-- ARGV[3] 'p<N>': the partition whose stream takes the event
-- Returns {verdict, value}: 'reserved' (first time), 'seen' (same content: go
-- on, the stream's partition says whether it is a duplicate), or 'conflict'
-- (other content) with the stream id or partition the id went to.
local seen = redis.call('GET', KEYS[1])
if seen then
  local digest, where = string.match(seen, '^(%S+) (%S+)$')
  if digest == ARGV[1] then
    return {'seen', where}
  end
  return {'conflict', where}
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[3], 'PX', ARGV[2])
return {'reserved', ARGV[3]}
