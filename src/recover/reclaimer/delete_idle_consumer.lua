-- Remove a consumer from a group only if it has no pending entries and has
-- been idle long enough, checked and done atomically (a consumer deleted with
-- pending entries would leave them unclaimable).
-- KEYS[1] the stream
-- ARGV[1] consumer group
-- ARGV[2] consumer name
-- ARGV[3] minimum idle time in milliseconds
-- Returns 1 when removed, 0 otherwise.
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, consumer in ipairs(consumers) do
  local info = {}
  for i = 1, #consumer, 2 do
    info[consumer[i]] = consumer[i + 1]
  end
  if info['name'] == ARGV[2] then
    if tonumber(info['pending']) == 0 and tonumber(info['idle']) >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
