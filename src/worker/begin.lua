-- Before pushing an entry: is it still this consumer's, and which devices are
-- done already? One round trip, and no push for an entry another consumer
-- took over (a reclaimer, while this worker was stopped or slow).
-- KEYS[1] the stream
-- KEYS[2] the event's outcomes hash
-- ARGV[1] consumer group
-- ARGV[2] this consumer
-- ARGV[3] the entry id
-- ARGV[4] '1' when entries are read with NOACK (never pending: always ours)
-- Returns {1 | 0 (taken over), subscription, marker, subscription, marker, ...}.
local reply = {1}
if ARGV[4] ~= '1' then
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
  if #pending == 0 or pending[1][2] ~= ARGV[2] then
    return {0}
  end
end
local done = redis.call('HGETALL', KEYS[2])
for i = 1, #done do
  reply[#reply + 1] = done[i]
end
return reply
