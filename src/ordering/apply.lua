-- Ordering of updates for one key: let an event through only if it is not
-- older than the newest one already applied, and record it as the newest.
-- KEYS[1] the key's register (same hash tag as the event's stream)
-- ARGV[1] the event's publish_at, unix milliseconds
-- ARGV[2] the event's id (breaks ties between equal times)
-- ARGV[3] lifetime of the register, in seconds
-- Returns {1, ''} when the event is the newest (or the same one again), and
-- {0, '<ms> <id>'} with the newer event that supersedes it.
local current = redis.call('GET', KEYS[1])
if current then
  local ms, id = string.match(current, '^(%d+) (.*)$')
  local mine = tonumber(ARGV[1])
  ms = tonumber(ms)
  if mine < ms or (mine == ms and ARGV[2] < id) then
    return {0, current}
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'EX', ARGV[3])
return {1, ''}
