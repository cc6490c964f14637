-- Settles devices' states for an event, after their pushes (or not-pushes), in
-- one call; many entries' calls go in one round trip (see batch.lua, which ends
-- this script). With 'release', also releases the entry's lease and its key's
-- lock, each only if it is still this process's (the end of an attempt); with
-- 'finish', also acknowledges the entry and forgets its retry hint first (the
-- end of an entry whose every device is settled); 'ack' is 'finish' without the
-- release, for an attempt that holds no key lock and sent no heartbeat (nothing
-- can still be on its way to find the lease, which expires by itself).
-- One call (`one`, below: KEYS and ARGV are the call's own):
-- KEYS[1] the event's outcomes hash
-- KEYS[2] the stream
-- KEYS[3] the partition's retry hints (retry-at)
-- KEYS[4] the entry's lease
-- KEYS[5] the ordering key's lock (KEYS[4] again when the event is not ordered)
-- ARGV[1] life of the outcomes hash, s
-- ARGV[2] the device claims' holder ('<consumer>#<process>/<entry id>')
-- ARGV[3] 'finish', 'ack', 'release', or '' (states only)
-- ARGV[4] consumer group
-- ARGV[5] the entry id
-- ARGV[6] this consumer
-- ARGV[7] the lock's holder, '' when the event is not ordered
-- ARGV[8] life of the release's marks, ms (see below)
-- ARGV[9] 'refresh': the outcomes hash lives ARGV[1] from now; 'kept': the
--         first claim's expiry (ARGV[1], which includes a margin, from then)
--         still covers their life without the margin, so only a hash this
--         call creates is given it
-- ARGV[10..] triples: mode, subscription id, state. Modes: 'mark': a settled
--         state, always written (the push service's answer is the truth);
--         'fail': the last failure, written only while the device is still
--         claimed by this holder (never over another processor's claim or a
--         settled state); 'unclaim': nothing was sent, the previous state goes
--         back ('' for none), also only while the claim is this holder's.
-- Returns the number of states written.

-- One read (of the states that are conditional) and one write per call, in
-- slices: Lua unpacks at most about 8,000 values at once.
local SLICE = 1000 -- even: HSET field-value pairs never split
-- Returns the replies' values (HMGET), or the sum of their counts (HSET: the
-- fields it created).
local function in_slices(command, key, values)
  local out, count = {}, 0
  for first = 1, #values, SLICE do
    local got = redis.call(command, key, unpack(values, first, math.min(first + SLICE - 1, #values)))
    if type(got) == 'table' then
      for _, v in ipairs(got) do
        out[#out + 1] = v
      end
    else
      count = count + got
    end
  end
  return out, count
end

-- Nothing is read once for all calls here.
local function prepare(calls, shared)
end

-- `now` and `shared` are unused here; `defer(command, key, first argument,
-- value)` has the batch run one command with every call's value at its end.
local function one(KEYS, ARGV, now, defer, shared)
  -- `created` of the `fields` written were new (HSET's count).
  local written, created, fields = 0, 0, 0
  if #ARGV == 12 and ARGV[10] == 'mark' and ARGV[12] ~= '' then
    -- One settled state (the usual end of a single-device event): written as
    -- is, as the general way below would.
    written, fields = 1, 1
    created = redis.call('HSET', KEYS[1], ARGV[11], ARGV[12])
  else
    local mine
    local conditional = {}
    for i = 10, #ARGV, 3 do
      if ARGV[i] ~= 'mark' then
        conditional[#conditional + 1] = ARGV[i + 1]
      end
    end
    local current = {}
    if #conditional > 0 then
      local values = in_slices('HMGET', KEYS[1], conditional)
      for i, sub in ipairs(conditional) do
        current[sub] = values[i]
      end
    end
    -- As if one after the other: a later triple of a device sees what an earlier
    -- one wrote; each device's last value is what gets written.
    local last, order = {}, {}
    for i = 10, #ARGV, 3 do
      local mode, sub, state = ARGV[i], ARGV[i + 1], ARGV[i + 2]
      local ours = true
      if mode ~= 'mark' then
        mine = mine or ('pushing ' .. ARGV[2] .. ' ')
        local now = current[sub]
        ours = now and string.sub(now, 1, #mine) == mine
      end
      if ours then
        if last[sub] == nil then
          order[#order + 1] = sub
        end
        last[sub] = state
        current[sub] = state ~= '' and state or false
        written = written + 1
      end
    end
    local sets, dels = {}, {}
    for _, sub in ipairs(order) do
      if last[sub] == '' then
        dels[#dels + 1] = sub
      else
        sets[#sets + 1] = sub
        sets[#sets + 1] = last[sub]
      end
    end
    local _, made = in_slices('HSET', KEYS[1], sets)
    in_slices('HDEL', KEYS[1], dels)
    created, fields = made, #sets / 2
  end
  -- Every field new: the hash may be new too (its claims expired, or it was
  -- deleted), without the expiry the first claim gave it.
  if written > 0 and (ARGV[9] ~= 'kept' or (created > 0 and created == fields)) then
    redis.call('EXPIRE', KEYS[1], ARGV[1])
  end
  if ARGV[3] == 'finish' or ARGV[3] == 'ack' then
    -- With the batch's other acknowledgements: one XACK and one HDEL for all.
    defer('XACK', KEYS[2], ARGV[4], ARGV[5])
    defer('HDEL', KEYS[3], nil, ARGV[5])
  end
  -- Released, not deleted: the lease and the lock are left as 'ended <holder>'
  -- for a while, which every reader takes for free, and which a heartbeat of
  -- this attempt still on its way (on a connection of its own) finds instead of
  -- a lapsed lease it would take again (see refresh.lua).
  if ARGV[3] == 'finish' or ARGV[3] == 'release' then
    local ended = 'ended ' .. ARGV[2]
    -- One write that reads what it replaced; the rare lease that was no longer
    -- ours (it lapsed and another took it) is put back, for a lease's time. A
    -- lapsed one nobody took is left released too (free to every reader).
    local was = redis.call('SET', KEYS[4], ended, 'PX', ARGV[8], 'GET')
    if was and was ~= ARGV[6] then
      redis.call('SET', KEYS[4], was, 'PX', ARGV[8])
    end
    if ARGV[7] ~= '' and redis.call('GET', KEYS[5]) == ARGV[7] then
      redis.call('SET', KEYS[5], ended, 'PX', ARGV[8])
    end
  end
  return written
end
