-- Settles one device's state for an event, after its push (or its not-push).
-- KEYS[1] the event's outcomes hash
-- ARGV[1] the subscription id
-- ARGV[2] 'mark': a settled state, always written (the push service's answer is
--         the truth); 'fail': the last failure, written only while the device is
--         still claimed by this holder (never over another processor's claim or
--         a settled state); 'unclaim': nothing was sent, the previous state goes
--         back, also only while the claim is this holder's
-- ARGV[3] the state to write ('' with 'unclaim': none before)
-- ARGV[4] life of the hash, s
-- ARGV[5] the claim's holder ('<consumer>/<entry id>')
-- Returns 1 when written, 0 when left alone.
local state = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] ~= 'mark' then
  local mine = 'pushing ' .. ARGV[5] .. ' '
  if not state or string.sub(state, 1, #mine) ~= mine then
    return 0
  end
  if ARGV[3] == '' then
    redis.call('HDEL', KEYS[1], ARGV[1])
    return 1
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
