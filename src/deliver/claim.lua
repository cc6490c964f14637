-- Claims an entry and its devices before pushing: one call per chunk of
-- devices, many entries' calls in one round trip (see batch.lua, which ends this
-- script). The first call for an entry also checks that the entry is still this
-- consumer's (XPENDING), that no other process works on it (its lease), and
-- takes the lock of its ordering key (one event of a key in progress at a
-- time); later calls only claim more devices.
--
-- Per device: a settled one (delivered, gone, dead, superseded, expired) is
-- done; one claimed by another holder whose claim is alive is busy (a copy of
-- the event, or another processor, is pushing it right now); one for which a
-- newer event of the same key was claimed is settled as superseded; any other
-- is claimed for this holder until a time, and this event becomes the newest
-- of its key for that device. So an event is superseded only for the devices
-- that got (or are getting) a newer one.
--
-- One call (`one`, below: KEYS and ARGV are the call's own):
-- KEYS[1] the stream
-- KEYS[2] the event's outcomes hash (subscription -> state)
-- KEYS[3] the entry's lease
-- KEYS[4] the ordering key's lock (KEYS[2] again when the event is not ordered)
-- KEYS[5] the ordering key's register (subscription -> '<due ms> <event id>'; KEYS[2] again when not ordered)
-- ARGV[1] consumer group
-- ARGV[2] this consumer
-- ARGV[3] the entry id
-- ARGV[4] '1' when entries are read with NOACK (never pending: always ours)
-- ARGV[5] life of the entry's lease and of the key's lock, ms (heartbeats extend both)
-- ARGV[6] '1' on the first call for the entry
-- ARGV[7] the holder of device claims and of the key's lock ('<consumer>/<entry id>')
-- ARGV[8] life of a device claim, ms (a whole push and a lease; heartbeats extend it)
-- ARGV[9] life of the outcomes hash, s
-- ARGV[10] the event's place in the order of its key ('<due ms> <event id>'), '' when not ordered
-- ARGV[11] life of the register, s
-- ARGV[12] 'claim', or 'inspect' (say each device's state, change nothing; the
--         key's lock is not taken either: nothing will be pushed)
-- ARGV[13..] subscription ids
-- Returns {status, per device...}. status: 'ok'; 'taken' (another consumer has
-- the entry or works on it, or, on a later call, its lease lapsed); 'busy' (another event of the key is in progress;
-- nothing was changed). Per device: 'claimed', or 'claimed <previous state>'
-- after a failed attempt; 'done <state>'; 'busy'; 'superseded <due ms> <event id>';
-- with 'inspect', the state as stored ('' for none).

-- A stream id's two numbers as text ('<ms>-<seq>': each may exceed what a
-- Lua number holds exactly), or nothing for anything else.
local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  if ms then
    return {id = id, ms = ms, seq = seq}
  end
end

-- Whether parsed id x comes before y: by length, then as text, each number.
local function before(x, y)
  if #x.ms ~= #y.ms then
    return #x.ms < #y.ms
  end
  if x.ms ~= y.ms then
    return x.ms < y.ms
  end
  if #x.seq ~= #y.seq then
    return #x.seq < #y.seq
  end
  return x.seq < y.seq
end

-- t[k], made when missing and `make`.
local function step(t, k, make)
  local inner = t and t[k]
  if not inner and make then
    inner = {}
    t[k] = inner
  end
  return inner
end

-- t[a][b][c], made on the way when `make`.
local function at(t, a, b, c, make)
  return step(step(step(t, a, make), b, make), c, make)
end

-- For the batch's first calls: which entries are pending to their consumer,
-- read with one XPENDING per stream, group and consumer over the span of
-- their ids (shared.mine[stream][group][consumer][id]: true or false),
-- instead of one per entry. A span whose answer may be cut short (as many
-- rows as asked for) is left out: its calls ask for themselves.
local function prepare(calls, shared)
  local by_owner, spans = {}, {}
  for _, call in ipairs(calls) do
    local K, A = call.keys, call.args
    local id = A[6] == '1' and A[4] ~= '1' and parse_id(A[3])
    if id then
      local span = at(by_owner, K[1], A[1], A[2], true)
      if not span.ids then
        span.stream, span.group, span.consumer, span.ids = K[1], A[1], A[2], {}
        spans[#spans + 1] = span
      end
      span.ids[#span.ids + 1] = id
    end
  end
  shared.mine = {}
  for _, span in ipairs(spans) do
    if #span.ids > 1 then
      local low, high = span.ids[1], span.ids[1]
      for _, id in ipairs(span.ids) do
        if before(id, low) then
          low = id
        end
        if before(high, id) then
          high = id
        end
      end
      local most = 2 * #span.ids + 128
      local rows = redis.call('XPENDING', span.stream, span.group, low.id, high.id, most, span.consumer)
      if #rows < most then
        local pending = {}
        for _, row in ipairs(rows) do
          pending[row[1]] = true
        end
        local mine = at(shared.mine, span.stream, span.group, span.consumer, true)
        for _, id in ipairs(span.ids) do
          mine[id.id] = pending[id.id] == true
        end
      end
    end
  end
end

-- Settled states: a device in one of them is done.
local SETTLED = {delivered = true, gone = true, dead = true, superseded = true, expired = true}

-- `now()` is the batch's time in ms; `defer` is unused here; `shared` is what
-- `prepare` read.
local function one(KEYS, ARGV, now, defer, shared)
  local now = now()
  local ordered = ARGV[10] ~= ''
  if ARGV[6] == '1' then
    if ARGV[4] ~= '1' then
      local known = shared.mine and at(shared.mine, KEYS[1], ARGV[1], ARGV[2], false)
      local mine = known and known[ARGV[3]]
      if mine == nil then
        local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
        mine = #pending > 0 and pending[1][2] == ARGV[2]
      end
      if not mine then
        return {'taken'}
      end
    end
    local locking = ordered and ARGV[12] ~= 'inspect'
    -- Without a key's lock to take first, a lease nobody holds (an entry's
    -- first attempt) is taken in one write.
    if locking or not redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5], 'NX') then
      -- 'ended <holder>': an attempt released it (settle.lua); as good as free.
      local lessee = redis.call('GET', KEYS[3])
      if lessee and lessee ~= ARGV[2] and string.sub(lessee, 1, 6) ~= 'ended ' then
        return {'taken'}
      end
      if locking then
        local lock = redis.call('GET', KEYS[4])
        if lock and lock ~= ARGV[7] and string.sub(lock, 1, 6) ~= 'ended ' then
          return {'busy', lock}
        end
        redis.call('SET', KEYS[4], ARGV[7], 'PX', ARGV[5])
      end
      redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5])
    end
  elseif redis.call('GET', KEYS[3]) ~= ARGV[2] then
    -- A later chunk: only while the entry's lease is still this consumer's.
    return {'taken'}
  end
  local mine_ms, mine_id
  if ordered then
    mine_ms, mine_id = string.match(ARGV[10], '^(%d+) (.*)$')
    mine_ms = tonumber(mine_ms)
  end
  local reply = {'ok'}
  -- One read and one write of each hash per chunk, however many devices.
  local subs = {}
  for i = 13, #ARGV do
    subs[#subs + 1] = ARGV[i]
  end
  -- One device of an unordered event with nothing stored for it yet (a first
  -- attempt): claimed in one write, as the general way below would.
  if #subs == 1 and not ordered and ARGV[12] ~= 'inspect' then
    local claim = 'pushing ' .. ARGV[7] .. ' ' .. (now + tonumber(ARGV[8]))
    -- Refused (a Redis user from before herald used HSETNX, say): the general
    -- way, which reads first, tells the rest.
    local ok, set = pcall(redis.call, 'HSETNX', KEYS[2], subs[1], claim)
    if ok and set == 1 then
      redis.call('EXPIRE', KEYS[2], ARGV[9])
      reply[2] = 'claimed'
      return reply
    end
  end
  if #subs == 0 then
    if ARGV[6] == '1' then
      redis.call('EXPIRE', KEYS[2], ARGV[9])
    end
    return reply
  end
  local states = redis.call('HMGET', KEYS[2], unpack(subs))
  local currents = {}
  if ordered and ARGV[12] ~= 'inspect' then
    currents = redis.call('HMGET', KEYS[5], unpack(subs))
  end
  local writes, registers = {}, {}
  for i, sub in ipairs(subs) do
    local state = states[i]
    local word = state and string.match(state, '^(%S+)') or ''
    if ARGV[12] == 'inspect' then
      reply[#reply + 1] = state or ''
    elseif SETTLED[word] then
      reply[#reply + 1] = 'done ' .. word
    else
      local busy = false
      if word == 'pushing' then
        local who, until_ms = string.match(state, '^pushing (%S+) (%d+)$')
        busy = who ~= ARGV[7] and tonumber(until_ms or '0') > now
      end
      local newer = false
      if not busy and ordered then
        local current = currents[i]
        if current then
          local ms, id = string.match(current, '^(%d+) (.*)$')
          ms = tonumber(ms)
          if ms and (ms > mine_ms or (ms == mine_ms and id > mine_id)) then
            newer = current
          end
        end
      end
      if busy then
        reply[#reply + 1] = 'busy'
      elseif newer then
        writes[#writes + 1] = sub
        writes[#writes + 1] = 'superseded'
        reply[#reply + 1] = 'superseded ' .. newer
      else
        if ordered then
          registers[#registers + 1] = sub
          registers[#registers + 1] = ARGV[10]
        end
        writes[#writes + 1] = sub
        writes[#writes + 1] = 'pushing ' .. ARGV[7] .. ' ' .. (now + tonumber(ARGV[8]))
        if word == 'failed' then
          reply[#reply + 1] = 'claimed ' .. state
        else
          reply[#reply + 1] = 'claimed'
        end
      end
    end
  end
  local wrote = #writes > 0
  if wrote then
    redis.call('HSET', KEYS[2], unpack(writes))
  end
  if #registers > 0 then
    redis.call('HSET', KEYS[5], unpack(registers))
    redis.call('EXPIRE', KEYS[5], ARGV[11])
  end
  -- Markers outlive the last attempt of their entry by their whole life.
  if wrote or ARGV[6] == '1' then
    redis.call('EXPIRE', KEYS[2], ARGV[9])
  end
  return reply
end
