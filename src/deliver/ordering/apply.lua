-- Ordering of updates for one key: one event of a key at a time, and only if
-- it is not older than the newest one already applied.
-- KEYS[1] the key's register (same hash tag as the event's stream)
-- KEYS[2] the key's lock (who is processing an event of this key)
-- ARGV[1] the event's publish_at, unix milliseconds
-- ARGV[2] the event's id (breaks ties between equal times)
-- ARGV[3] lifetime of the register, in seconds
-- ARGV[4] the lock holder (the entry's stream id)
-- ARGV[5] lock time in milliseconds
-- Returns {1, ''} when the event is the newest (or the same one again) and
-- holds the lock; {0, '<ms> <id>'} with the newer event that supersedes it;
-- {2, holder} while another event of the key is being processed.
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[4] then
  return {2, holder}
end
local current = redis.call('GET', KEYS[1])
if current then
  local ms, id = string.match(current, '^(%d+) (.*)$')
  local mine = tonumber(ARGV[1])
  ms = tonumber(ms)
  if mine < ms or (mine == ms and ARGV[2] < id) then
    if holder then
      redis.call('DEL', KEYS[2])
    end
    return {0, current}
  end
end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'EX', ARGV[3])
return {1, ''}
