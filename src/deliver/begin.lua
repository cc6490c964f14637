-- Before pushing an entry: is it still this consumer's, is nobody else working
-- on it, and which devices are done already? One round trip. The lease keeps
-- two processes (a reclaimer and a worker re-reading its own entries after a
-- Redis restart, say) from pushing one entry at the same time.
-- KEYS[1] the stream
-- KEYS[2] the event's outcomes hash
-- KEYS[3] the entry's lease
-- ARGV[1] consumer group
-- ARGV[2] this consumer
-- ARGV[3] the entry id
-- ARGV[4] '1' when entries are read with NOACK (never pending: always ours)
-- ARGV[5] lease time in milliseconds
-- Returns {1, subscription, marker, subscription, marker, ...}, or {0} when
-- another consumer has the entry or is working on it.
if ARGV[4] ~= '1' then
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
  if #pending == 0 or pending[1][2] ~= ARGV[2] then
    return {0}
  end
end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[2] then
  return {0}
end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5])
local reply = {1}
local done = redis.call('HGETALL', KEYS[2])
for i = 1, #done do
  reply[#reply + 1] = done[i]
end
return reply
