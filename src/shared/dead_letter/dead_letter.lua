-- Write one dead letter, and acknowledge its entry when asked, atomically.
-- KEYS[1] the dead-letter stream
-- KEYS[2] the source stream
-- KEYS[3] the event's outcomes hash (used when ARGV[4] names a subscription)
-- KEYS[4] the partition's retry-at hash
-- ARGV[1] consumer group
-- ARGV[2] source entry id
-- ARGV[3] 'ack' to acknowledge the entry, 'keep' to leave it pending
-- ARGV[4] subscription id that failed ('' when the whole entry is dead)
-- ARGV[5] lifetime of the outcomes hash, in seconds
-- ARGV[6..] field/value pairs of the dead letter
-- Returns the dead letter's id.
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 6))
if ARGV[4] ~= '' then
  -- A device the push service accepted meanwhile (another processor) stays delivered.
  if redis.call('HGET', KEYS[3], ARGV[4]) ~= 'delivered' then
    redis.call('HSET', KEYS[3], ARGV[4], 'dead')
  end
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
if ARGV[3] == 'ack' then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('HDEL', KEYS[4], ARGV[2])
end
return id
