-- Heartbeat of an entry in progress: reset its idle time (XCLAIM ... JUSTID,
-- which leaves the delivery count alone), but only while it is still this
-- consumer's: never take it back from a consumer that claimed it meanwhile.
-- KEYS[1] the stream
-- ARGV[1] consumer group
-- ARGV[2] this consumer
-- ARGV[3] the entry id
-- Returns 1 when refreshed, 0 when the entry is no longer this consumer's.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
