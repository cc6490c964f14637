-- Put a dead letter back into its source stream and remove it from the
-- dead-letter stream, atomically: it is never in neither.
-- KEYS[1] the dead-letter stream
-- KEYS[2] the source stream
-- KEYS[3] the outcomes hash its devices are tracked in
-- ARGV[1] the dead letter's id
-- ARGV[2] the name of the field that limits a replay to one device ('replay_only')
-- Returns the new stream id, or an error when the dead letter is gone or is a tombstone.
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return redis.error_reply('NOTFOUND no dead letter ' .. ARGV[1])
end
local fields = found[1][2]
local original = {}
local subscription = ''
for i = 1, #fields, 2 do
  local name, value = fields[i], fields[i + 1]
  if name == 'dlq.subscription' then
    subscription = value
  elseif string.sub(name, 1, 4) ~= 'dlq.' and name ~= ARGV[2] then
    table.insert(original, name)
    table.insert(original, value)
  end
end
if #original == 0 then
  return redis.error_reply('TOMBSTONE dead letter ' .. ARGV[1] .. ' has no event to replay')
end
if subscription ~= '' then
  -- One device's share: only that device is tried again, whatever the others' states.
  table.insert(original, ARGV[2])
  table.insert(original, subscription)
  -- A device that got the event meanwhile keeps its state: the copy skips it.
  if redis.call('HGET', KEYS[3], subscription) ~= 'delivered' then
    redis.call('HDEL', KEYS[3], subscription)
  end
else
  -- The whole entry died: its dead devices are tried again; the ones that got it keep their state.
  local outcomes = redis.call('HGETALL', KEYS[3])
  for i = 1, #outcomes, 2 do
    if outcomes[i + 1] == 'dead' then
      redis.call('HDEL', KEYS[3], outcomes[i])
    end
  end
end
local id = redis.call('XADD', KEYS[2], '*', unpack(original))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
