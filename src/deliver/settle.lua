-- Settles one device's state for an event, after its push (or its not-push).
-- KEYS[1] the event's outcomes hash
-- ARGV[1] the subscription id
-- ARGV[2] 'mark': a settled state, always written (the push service's answer is
--         the truth); 'fail': the last failure, written unless the device was
--         settled meanwhile; 'unclaim': nothing was sent, the previous state goes
--         back if the claim is still this holder's
-- ARGV[3] the state to write ('' with 'unclaim': none before)
-- ARGV[4] life of the hash, s
-- ARGV[5] the claim's holder ('<consumer>/<entry id>')
local state = redis.call('HGET', KEYS[1], ARGV[1])
local word = state and string.match(state, '^(%S+)') or ''
local settled = {delivered = true, gone = true, dead = true, superseded = true, expired = true}
if ARGV[2] == 'fail' and settled[word] then
  return 0
end
if ARGV[2] == 'unclaim' then
  if word ~= 'pushing' or string.match(state, '^pushing (%S+) ') ~= ARGV[5] then
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
