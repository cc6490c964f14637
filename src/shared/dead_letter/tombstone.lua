-- Record, once, that a pending entry was deleted or trimmed before it was
-- processed, and drop it from the pending list.
-- KEYS[1] the dead-letter stream
-- KEYS[2] the tombstone marker of that entry
-- KEYS[3] the source stream
-- KEYS[4] the partition's retry-at hash (the entry's hint goes too)
-- ARGV[1] consumer group
-- ARGV[2] source entry id
-- ARGV[3] lifetime of the marker, in seconds
-- ARGV[4..] field/value pairs of the tombstone
-- Returns the dead letter's id, or false when another process recorded it already.
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  return false
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
