-- Heartbeat of an entry in progress: reset its idle time (XCLAIM ... JUSTID,
-- which leaves the delivery count alone), extend its lease and its key's lock
-- (taking them again if they lapsed, say while Redis was away, unless someone
-- else holds them now), and extend the claims of its devices not settled yet;
-- but only while the entry is still this consumer's: never take anything back
-- from one that claimed it.
-- KEYS[1] the stream
-- KEYS[2] the entry's lease
-- KEYS[3] the ordering key's lock (KEYS[2] again when the event is not ordered)
-- KEYS[4] the event's outcomes hash (device states)
-- ARGV[1] consumer group
-- ARGV[2] this consumer
-- ARGV[3] the entry id
-- ARGV[4] life of the lease and of the lock, ms
-- ARGV[5] '1' when entries are read with NOACK (never pending)
-- ARGV[6] the lock's holder, '' when the event is not ordered
-- ARGV[7] the device claims' holder ('<consumer>#<process>/<entry id>')
-- ARGV[8] life of a device claim, ms
-- ARGV[9..] subscription ids of devices claimed and not settled yet
-- Returns 1 when refreshed, 0 when the entry is no longer this consumer's, 2
-- when this attempt already ended (its release got here first: nothing to do).
local lessee = redis.call('GET', KEYS[2])
if lessee == 'ended ' .. ARGV[7] then
  return 2
end
if ARGV[5] ~= '1' then
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
  if #pending == 0 or pending[1][2] ~= ARGV[2] then
    return 0
  end
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
end
if lessee and lessee ~= ARGV[2] and string.sub(lessee, 1, 6) ~= 'ended ' then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
if ARGV[6] ~= '' then
  local lock = redis.call('GET', KEYS[3])
  if not lock or lock == ARGV[6] or string.sub(lock, 1, 6) == 'ended ' then
    redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[4])
  end
end
if #ARGV >= 9 then
  local t = redis.call('TIME')
  local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[8])
  local mine = 'pushing ' .. ARGV[7] .. ' '
  for i = 9, #ARGV do
    local state = redis.call('HGET', KEYS[4], ARGV[i])
    if state and string.sub(state, 1, #mine) == mine then
      redis.call('HSET', KEYS[4], ARGV[i], mine .. until_ms)
    end
  end
end
return 1
