-- A device's push of an ordered event ended without reaching it (dead-lettered,
-- expired): the key's register forgets the event for that device, if it is still
-- the one there, so that an older event of the key is not skipped for nothing.
-- KEYS[1] the key's register (subscription -> '<due ms> <event id>')
-- ARGV[1] the subscription id
-- ARGV[2] the event's place ('<due ms> <event id>')
-- Returns 1 when forgotten.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
