-- Heartbeat of an entry in progress: reset its idle time (XCLAIM ... JUSTID,
-- which leaves the delivery count alone) and extend its lease, but only while
-- it is still this consumer's: never take it back from one that claimed it.
-- KEYS[1] the stream
-- KEYS[2] the entry's lease
-- ARGV[1] consumer group
-- ARGV[2] this consumer
-- ARGV[3] the entry id
-- ARGV[4] lease time in milliseconds
-- Returns 1 when refreshed, 0 when the entry is no longer this consumer's.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
if redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return 1
