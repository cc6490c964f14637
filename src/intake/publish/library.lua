#!lua name=herald
-- herald's publish as Redis Functions (Redis 7+): the one implementation of
-- publishing, used by herald's API, `herald publish` and the spool drain, and
-- by any producer with `FCALL`. herald loads this library at start (FUNCTION
-- LOAD REPLACE whenever the loaded code differs), with its settings written in
-- below; README ("Publishing with XADD or FCALL") documents the contract.
--
--   FCALL herald_publish 1 <stream> field value [field value ...]
--   FCALL herald_publish 4 <stream> <dedup record> <schedule> <scheduled events> \
--         <dedup window ms> <digest> <deliver_at ms> <id> field value ... (the whole entry)
--
-- With one key, the others are named from the stream's hash tag (same slot),
-- and the limits written in below apply. The four-key form is for a caller
-- that checked the fields by these same rules (and the times against its own
-- clock and settings) and computed the digest the same way, as herald does
-- (through herald_publish_batch, below, many events per call): the function
-- only deduplicates and writes the entry as given (with `v`, and the defaults
-- the caller filled in), with the caller's dedup window.
-- Fields are those of a stream entry: `topic` and `title` are required, `id`
-- makes the publish idempotent within the dedup window (same content: the
-- original entry's id again; other content: a CONFLICT error), `deliver_at`
-- ahead of now puts the event in the schedule. Returns {stream id, outcome}:
-- outcome 'added', 'duplicate' or 'scheduled' (stream id '' while scheduled).
-- A field that breaks the contract is an error naming it: INVALID <field>: why.
--
--   FCALL herald_reserve 1 <dedup record in the id's partition> <partition> <dedup window ms, 0: the one below> field value ...
--
-- The first half of a publish whose id and ordering key fall in different
-- partitions (see README): returns {'reserved'|'seen'|'conflict', where}.
--
--   FCALL herald_publish_batch <3 + n> <stream> <schedule> <scheduled events> <dedup record>... \
--         <dedup window ms> then per event: <digest> <deliver_at ms> <id> <number of fields> field value ...
--
-- herald's own calls: n events of one partition (herald sends at most 100
-- per call) as the four-key form takes them, in one call, answered one by one
-- (see publish_batch below); a malformed call writes nothing.

local DEDUP_WINDOW_MS = __DEDUP_WINDOW_MS__
local MAX_CLOCK_SKEW_MS = __MAX_CLOCK_SKEW_MS__
local MAX_TTL = __MAX_TTL__
local MAX_DELAY_MS = __MAX_DELAY_DAYS__ * 86400000
local MAX_PAYLOAD_BYTES = __MAX_PAYLOAD_BYTES__
local ENTRY_VERSION = '__ENTRY_VERSION__'

-- The notification's fields (notification::FIELDS), and how each is written.
local NOTIFICATION = {
  title = 'text', body = 'text', url = 'url', icon = 'url', image = 'url', badge = 'url',
  tag = 'text', renotify = 'flag', require_interaction = 'flag', silent = 'flag',
  timestamp = 'number', lang = 'text', dir = 'text', vibrate = 'json', actions = 'json',
  data = 'json', app_badge = 'number', mutable = 'flag',
}
-- Limits of notification.rs.
local MAX_ACTIONS, MAX_VIBRATE, MAX_VIBRATE_MS, MAX_DATA_BYTES = 4, 32, 10000, 2048
local MAX_URL_BYTES, MAX_TITLE_BYTES, MAX_TAG_BYTES, MAX_LANG_BYTES = 1024, 256, 128, 35
local MAX_ACTION_ID_BYTES, MAX_ACTION_TITLE_BYTES = 64, 128
local MAX_JS_INTEGER = 9007199254740991
local KNOWN = {
  v = true, id = true, topic = true, user = true, key = true, publish_at = true,
  deliver_at = true, ttl = true, urgency = true, traceparent = true,
}
local URGENCIES = { ['very-low'] = true, low = true, normal = true, high = true }
-- Left out of the content's digest: they differ between two sends of one event.
local NOT_CONTENT = { id = true, v = true, traceparent = true }
-- Fields of the payload a device receives (Event::payload), besides publish_at.
-- Most words in a topic (event::MAX_TOPIC_WORDS).
local MAX_TOPIC_WORDS = 32
-- Control characters serde_json escapes in two bytes; the others take six.
local SHORT_ESCAPE = { ['\b'] = true, ['\t'] = true, ['\n'] = true, ['\f'] = true, ['\r'] = true }

-- A refusal: raised as text (level 0: no position), answered as an error reply by `refusing`.
local function invalid(field, why)
  error('INVALID ' .. field .. ': ' .. why, 0)
end

local function identifier(field, value, max)
  if #value == 0 or #value > max then
    invalid(field, 'must be 1 to ' .. max .. ' characters')
  end
  if not string.match(value, '^[%w%-_%.:@]+$') then
    invalid(field, "may only contain A-Z, a-z, 0-9, '-', '_', '.', ':' and '@'")
  end
end

-- Days since 1970-01-01 of a civil date (proleptic Gregorian).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- An RFC 3339 time (2026-11-21T10:00:00Z, 2026-11-21T11:00:00.250+01:00) in unix ms.
local function time_ms(field, text)
  local y, mo, d, h, mi, s, frac, zone = string.match(text,
    '^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(%.?%d*)(.*)$')
  if frac == '.' then
    invalid(field, 'a decimal point needs digits after it')
  end
  if not y then
    invalid(field, 'expected RFC 3339 like 2026-11-21T10:00:00Z, got ' .. string.format('%q', string.sub(text, 1, 64)))
  end
  local offset = 0
  if zone == 'Z' or zone == 'z' then
    offset = 0
  else
    local sign, zh, zm = string.match(zone, '^([%+%-])(%d%d):(%d%d)$')
    if not sign or tonumber(zh) > 23 or tonumber(zm) > 59 then
      invalid(field, 'needs a time zone: Z or +HH:MM (at most 23:59)')
    end
    offset = (tonumber(zh) * 60 + tonumber(zm)) * 60000
    if sign == '-' then offset = -offset end
  end
  mo, d, h, mi, s = tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(s)
  local year = tonumber(y)
  local leap = (year % 4 == 0 and year % 100 ~= 0) or year % 400 == 0
  local days = ({ 31, leap and 29 or 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 })[mo]
  if not days or d < 1 or d > days or h > 23 or mi > 59 or s > 60 then
    invalid(field, 'is not a valid date and time')
  end
  local ms = 0
  if #frac > 1 then
    ms = math.floor(tonumber('0' .. frac) * 1000)
  end
  local at = (days_from_civil(tonumber(y), mo, d) * 86400 + h * 3600 + mi * 60 + s) * 1000 + ms - offset
  -- The payload writes it in UTC as 24 characters: years 1970 to 9999 only.
  if at < 0 or at >= 253402300800000 then
    invalid(field, 'must be between 1970 and 9999 in UTC')
  end
  return at
end

-- Whether `s` is UTF-8 as Rust's str takes it (no overlong forms, no
-- surrogates, nothing above U+10FFFF): the worker refuses any other field.
local function utf8_ok(s)
  if not string.find(s, '[\128-\255]') then return true end
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    if c < 0x80 then
      i = i + 1
    else
      local len
      if c >= 0xC2 and c <= 0xDF then len = 2
      elseif c >= 0xE0 and c <= 0xEF then len = 3
      elseif c >= 0xF0 and c <= 0xF4 then len = 4
      else return false end
      local code = c % (2 ^ (7 - len))
      for k = 1, len - 1 do
        local b = string.byte(s, i + k)
        if not b or b < 0x80 or b > 0xBF then return false end
        code = code * 64 + (b - 0x80)
      end
      if (len == 3 and (code < 0x800 or (code >= 0xD800 and code <= 0xDFFF)))
          or (len == 4 and (code < 0x10000 or code > 0x10FFFF)) then
        return false
      end
      i = i + len
    end
  end
  return true
end

-- The UTF-8 bytes of a code point.
local function utf8_char(code)
  if code < 0x80 then return string.char(code) end
  if code < 0x800 then return string.char(0xC0 + math.floor(code / 64), 0x80 + code % 64) end
  if code < 0x10000 then
    return string.char(0xE0 + math.floor(code / 4096), 0x80 + math.floor(code / 64) % 64, 0x80 + code % 64)
  end
  return string.char(0xF0 + math.floor(code / 262144), 0x80 + math.floor(code / 4096) % 64,
    0x80 + math.floor(code / 64) % 64, 0x80 + code % 64)
end

local UNESCAPED = { ['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t' }

-- The text of a JSON string (quotes included, escapes already checked), unescaped.
local function unescape(raw)
  local out, i, n = {}, 2, #raw - 1
  while i <= n do
    local c = string.sub(raw, i, i)
    if c ~= '\\' then
      out[#out + 1] = c
      i = i + 1
    elseif string.sub(raw, i + 1, i + 1) == 'u' then
      local code = tonumber(string.sub(raw, i + 2, i + 5), 16)
      i = i + 6
      if code >= 0xD800 and code <= 0xDBFF then
        code = 0x10000 + (code - 0xD800) * 1024 + (tonumber(string.sub(raw, i + 2, i + 5), 16) - 0xDC00)
        i = i + 6
      end
      out[#out + 1] = utf8_char(code)
    else
      out[#out + 1] = UNESCAPED[string.sub(raw, i + 1, i + 1)]
      i = i + 2
    end
  end
  return table.concat(out)
end

-- Bytes of `s` as a JSON string, quotes included, as serde_json writes it.
local function json_len(s)
  local _, escaped = string.gsub(s, '["\\]', '')
  local n = #s + 2 + escaped
  for c in string.gmatch(s, '[%z\1-\31]') do
    n = n + (SHORT_ESCAPE[c] and 1 or 5)
  end
  return n
end

-- JSON text as herald embeds it: without surrounding whitespace.
local function trimmed(s)
  return string.match(s, '^[ \t\n\r]*(.-)[ \t\n\r]*$')
end

-- The payload's size (notification::herald_payload: the present fields and
-- publish_at, 24 characters); an absent id is counted as the longest derived
-- one (a stream id's sequence may have up to 20 digits), so that what the
-- function takes always fits, whatever id the entry gets.
local function payload_len(f)
  local n, members = 2, 0
  -- The notification's members, and the event's id and topic (as text).
  local kinds = { id = 'text', topic = 'text' }
  for name, kind in pairs(NOTIFICATION) do kinds[name] = kind end
  for name, kind in pairs(kinds) do
    local value = f[name]
    if name == 'id' and not value then
      value = 'xadd-0000000000000-00000000000000000000'
    end
    if value then
      local size
      if kind == 'text' or kind == 'url' then
        size = json_len(value)
      elseif kind == 'json' then
        size = #trimmed(value)
      else
        size = #value
      end
      n = n + json_len(name) + 1 + size
      members = members + 1
    end
  end
  return n + json_len('publish_at') + 1 + 26 + members
end

-- Blank as Rust's trim() sees it: ASCII and the Unicode White_Space characters.
local function blank(s)
  s = string.gsub(s, '\194[\133\160]', '')
  s = string.gsub(s, '\225\154\128', '')
  s = string.gsub(s, '\226\128[\128-\138\168\169\175]', '')
  s = string.gsub(s, '\226\129\159', '')
  s = string.gsub(s, '\227\128\128', '')
  return not string.match(s, '%S')
end

-- Spaces and control characters, as Rust's is_whitespace and is_control see them.
local function has_space(s)
  return string.find(s, '[%z\1-\32\127]') or string.find(s, '\194[\128-\160]')
    or string.find(s, '\225\154\128') or string.find(s, '\226\128[\128-\138\168\169\175]')
    or string.find(s, '\226\129\159') or string.find(s, '\227\128\128')
end

-- `https://` (any case), a host name, an optional port, then nothing or a
-- path, query or fragment: notification.rs's absolute_https, exactly.
local function absolute_https(value)
  if string.lower(string.sub(value, 1, 8)) ~= 'https://' then return false end
  local authority = string.match(string.sub(value, 9), '^[^/?#]*')
  local host, port = authority, nil
  local colon = string.find(authority, ':', 1, true)
  if colon then
    host, port = string.sub(authority, 1, colon - 1), string.sub(authority, colon + 1)
    if #port < 1 or #port > 5 or not string.match(port, '^%d+$') or tonumber(port) > 65535 then
      return false
    end
  end
  if #host > 253 then return false end
  local last
  for label in string.gmatch(host .. '.', '([^.]*)%.') do
    if #label < 1 or #label > 63 or not string.match(label, '^[%w%-]+$')
        or string.sub(label, 1, 1) == '-' or string.sub(label, -1) == '-' then
      return false
    end
    last = label
  end
  return last ~= nil and string.match(last, '^%a') ~= nil
end

-- A URL a notification may carry: absolute https:, or a path starting with one '/'.
local function url(field, value)
  if #value > MAX_URL_BYTES then invalid(field, 'must be at most ' .. MAX_URL_BYTES .. ' bytes') end
  if has_space(value) then invalid(field, 'must not contain spaces or control characters') end
  if string.find(value, '\\', 1, true) then invalid(field, "must not contain '\\'") end
  if string.sub(value, 1, 1) == '/' then
    if string.sub(value, 2, 2) == '/' then
      invalid(field, "a relative URL starts with one '/' (like /visits/981), not '//'")
    end
    return
  end
  if not absolute_https(value) then
    invalid(field, "must be an absolute https: URL with a host name (https://parking.example/...) or a path starting with '/' (like /visits/981)")
  end
end

-- Checks that `text` is JSON as serde_json reads it (RFC 8259 exactly: no
-- NaN, Infinity, hex, '+', leading zeros or bare '1.'; no raw control
-- characters or lone surrogates in strings; numbers within a double's range),
-- without a member named twice in one object, at most 100 levels deep:
-- Redis's cjson takes much that serde_json refuses.
local function strict_json(field, text)
  local pos, depth = 1, 0
  local function fail(why) invalid(field, 'is not JSON: ' .. why .. ' at byte ' .. pos) end
  local function ws() pos = string.find(text, '[^ \t\n\r]', pos) or (#text + 1) end
  local function hex4(at)
    local h = string.match(text, '^%x%x%x%x', at)
    if not h then fail('a bad \\u escape') end
    return tonumber(h, 16)
  end
  local function str()
    local start = pos
    pos = pos + 1
    while true do
      local c = string.byte(text, pos)
      if not c then fail('an unterminated string') end
      if c == 34 then break end
      if c < 32 then fail('a raw control character in a string') end
      if c == 92 then
        local e = string.sub(text, pos + 1, pos + 1)
        if e == 'u' then
          local code = hex4(pos + 2)
          pos = pos + 6
          if code >= 0xDC00 and code <= 0xDFFF then fail('a lone surrogate') end
          if code >= 0xD800 and code <= 0xDBFF then
            if string.sub(text, pos, pos + 1) ~= '\\u' then fail('a lone surrogate') end
            local low = hex4(pos + 2)
            if low < 0xDC00 or low > 0xDFFF then fail('a lone surrogate') end
            pos = pos + 6
          end
        elseif e ~= '' and string.find('"\\/bfnrt', e, 1, true) then
          pos = pos + 2
        else
          fail('a bad escape')
        end
      else
        pos = pos + 1
      end
    end
    pos = pos + 1
    return string.sub(text, start, pos - 1)
  end
  local function number()
    local start = pos
    local int = string.match(text, '^%-?%d+', pos)
    if not int then fail('an unexpected character') end
    if string.match(int, '^%-?0%d') then fail('a leading zero') end
    pos = pos + #int
    local frac = string.match(text, '^%.%d*', pos)
    if frac then
      if #frac == 1 then fail('a decimal point without digits') end
      pos = pos + #frac
    end
    local exp = string.match(text, '^[eE][%+%-]?%d*', pos)
    if exp then
      if not string.match(exp, '%d$') then fail('an exponent without digits') end
      pos = pos + #exp
    end
    local n = tonumber(string.sub(text, start, pos - 1))
    -- serde_json's reading of numbers near the largest double overflows.
    if not n or n ~= n or math.abs(n) > 1e308 then fail('a number out of range') end
  end
  local value
  local function container(close, member)
    depth = depth + 1
    if depth > 100 then fail('more than 100 levels of nesting') end
    pos = pos + 1
    ws()
    local names = {}
    if string.sub(text, pos, pos) == close then
      pos = pos + 1
    else
      while true do
        if member then
          if string.sub(text, pos, pos) ~= '"' then fail('a member name expected') end
          -- Compared unescaped: "a" and "\u0061" are one name to serde_json.
          local name = unescape(str())
          if names[name] then fail('a member named twice') end
          names[name] = true
          ws()
          if string.sub(text, pos, pos) ~= ':' then fail("':' expected") end
          pos = pos + 1
          ws()
        end
        value()
        ws()
        local c = string.sub(text, pos, pos)
        pos = pos + 1
        if c == close then break end
        if c ~= ',' then fail("',' or '" .. close .. "' expected") end
        ws()
      end
    end
    depth = depth - 1
  end
  value = function()
    local c = string.sub(text, pos, pos)
    if c == '{' then container('}', true)
    elseif c == '[' then container(']', false)
    elseif c == '"' then str()
    elseif string.sub(text, pos, pos + 3) == 'true' or string.sub(text, pos, pos + 3) == 'null' then pos = pos + 4
    elseif string.sub(text, pos, pos + 4) == 'false' then pos = pos + 5
    else number() end
  end
  ws()
  value()
  ws()
  if pos <= #text then fail('text after the value') end
end

local function text_max(field, value, max)
  if #value > max then invalid(field, 'must be at most ' .. max .. ' bytes (got ' .. #value .. ')') end
end

local function json_value(field, text)
  if #trimmed(text) == 0 then invalid(field, 'must be JSON') end
  strict_json(field, text)
  local ok, value = pcall(cjson.decode, text)
  if not ok then invalid(field, 'is not JSON: ' .. tostring(value)) end
  return value
end

-- Whether a decoded table is a JSON array (cjson gives both as tables).
local function array(field, text, value)
  if type(value) ~= 'table' or string.sub(trimmed(text), 1, 1) ~= '[' then
    invalid(field, 'must be a JSON array')
  end
  return value
end

-- The notification's options, as notification::Notification::check has them.
local function check_notification(f)
  if not f.title then
    for name in pairs(NOTIFICATION) do
      if f[name] and name ~= 'data' then
        invalid('title', 'is required with ' .. name .. ' (an entry without title is a data push: data alone)')
      end
    end
    if not f.data then invalid('title', 'is required (or data alone, for a data push)') end
  else
    if blank(f.title) then invalid('title', 'is required and must not be blank') end
    text_max('title', f.title, MAX_TITLE_BYTES)
  end
  for name, kind in pairs(NOTIFICATION) do
    local value = f[name]
    if value and kind == 'url' then url(name, value) end
    if value and kind == 'flag' and value ~= 'true' and value ~= 'false' then
      invalid(name, 'must be true or false')
    end
    if value and kind == 'number' then
      if not (value == '0' or string.match(value, '^[1-9]%d*$')) or #value > 16 or tonumber(value) > MAX_JS_INTEGER then
        invalid(name, 'must be a whole number from 0 to 2^53-1, digits only')
      end
    end
  end
  if f.tag then text_max('tag', f.tag, MAX_TAG_BYTES) end
  if f.renotify == 'true' and (f.tag or '') == '' then
    invalid('renotify', 'needs a tag: renotify alerts again for a notification replacing one of the same tag')
  end
  if f.lang then
    local ok = #f.lang <= MAX_LANG_BYTES
    local first = true
    for part in string.gmatch(f.lang .. '-', '([^%-]*)%-') do
      if first then
        ok = ok and #part >= 2 and #part <= 8 and string.match(part, '^%a+$') ~= nil
      else
        ok = ok and #part >= 1 and #part <= 8 and string.match(part, '^%w+$') ~= nil
      end
      first = false
    end
    if not ok then invalid('lang', 'must be a language tag like en or pt-BR') end
  end
  if f.dir and f.dir ~= 'auto' and f.dir ~= 'ltr' and f.dir ~= 'rtl' then
    invalid('dir', 'must be auto, ltr or rtl')
  end
  if f.vibrate then
    local text = trimmed(f.vibrate)
    if not string.match(text, '^%[[%s%d,]*%]$') or string.find(text, '%f[%d]0%d') then
      invalid('vibrate', 'must be a JSON array of whole milliseconds, like [200,100,200]')
    end
    local pattern = array('vibrate', text, json_value('vibrate', text))
    if #pattern > MAX_VIBRATE then invalid('vibrate', 'at most ' .. MAX_VIBRATE .. ' durations') end
    for _, ms in ipairs(pattern) do
      if ms > MAX_VIBRATE_MS then invalid('vibrate', 'each duration is at most ' .. MAX_VIBRATE_MS .. ' ms') end
    end
    if f.silent == 'true' then invalid('vibrate', 'must be left out when silent is true') end
  end
  if f.actions then
    local actions = array('actions', f.actions, json_value('actions', f.actions))
    local count = 0
    for _ in pairs(actions) do count = count + 1 end
    if count ~= #actions then invalid('actions', 'must be a JSON array') end
    if #actions > MAX_ACTIONS then invalid('actions', 'at most ' .. MAX_ACTIONS .. ' actions') end
    local seen = {}
    for i, a in ipairs(actions) do
      local at = 'actions[' .. (i - 1) .. ']'
      if type(a) ~= 'table' then invalid(at, 'must be an object with action and title') end
      for key, value in pairs(a) do
        if key ~= 'action' and key ~= 'title' and key ~= 'icon' and key ~= 'url' then
          invalid(at .. '.' .. tostring(key), 'is not a member of an action (action, title, icon, url)')
        end
        if type(value) ~= 'string' then invalid(at .. '.' .. key, 'must be a string') end
      end
      if not a.action or blank(a.action) then invalid(at .. '.action', 'is required and must not be blank') end
      text_max(at .. '.action', a.action, MAX_ACTION_ID_BYTES)
      if seen[a.action] then invalid(at .. '.action', 'is used by an earlier action') end
      seen[a.action] = true
      if not a.title or blank(a.title) then invalid(at .. '.title', 'is required and must not be blank') end
      text_max(at .. '.title', a.title, MAX_ACTION_TITLE_BYTES)
      if a.icon then url(at .. '.icon', a.icon) end
      if a.url then url(at .. '.url', a.url) end
    end
  end
  if f.data then
    if json_value('data', f.data) == cjson.null then
      invalid('data', 'must not be null (leave it out instead)')
    end
    if #trimmed(f.data) > MAX_DATA_BYTES then
      invalid('data', 'must be at most ' .. MAX_DATA_BYTES .. ' bytes of JSON')
    end
  end
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether `a` sorts before `b` byte by byte (strcmp, whatever the locale).
local function by_bytes(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

-- The fields as a table, checked against the entry contract; the content's
-- digest. `clock`: also check the times against the server's clock.
local function check(argv, first, clock)
  if (#argv - first + 1) % 2 ~= 0 or #argv < first then
    invalid('fields', 'expected field value pairs after the keys')
  end
  local f = {}
  local names = {}
  for i = first, #argv, 2 do
    local name, value = argv[i], argv[i + 1]
    if not utf8_ok(name) then
      invalid('fields', 'a field name is not UTF-8 text')
    end
    if not utf8_ok(value) then
      invalid(name, 'is not UTF-8 text')
    end
    if f[name] then
      invalid(name, 'is given twice')
    end
    if not (KNOWN[name] or NOTIFICATION[name] or string.sub(name, 1, 2) == 'h.') then
      invalid(name, 'is not a field of an event (see README, "Publishing with XADD or FCALL")')
    end
    f[name] = value
    names[#names + 1] = name
  end
  if f.v and f.v ~= ENTRY_VERSION then
    invalid('v', 'entry version ' .. string.format('%q', f.v) .. ' is not understood; leave it out, or write ' .. ENTRY_VERSION)
  end
  if f.id then identifier('id', f.id, 128) end
  if not f.topic or #f.topic == 0 or #f.topic > 255 then
    invalid('topic', 'is required: 1 to 255 characters')
  end
  local words = 0
  for word in string.gmatch(f.topic .. '.', '([^%.]*)%.') do
    words = words + 1
    if words > MAX_TOPIC_WORDS then invalid('topic', 'must have at most ' .. MAX_TOPIC_WORDS .. ' words') end
    if word == '' then invalid('topic', 'words between dots must not be empty') end
    if not string.match(word, '^[%w%-_:]+$') then
      invalid('topic', "words may only contain A-Z, a-z, 0-9, '-', '_' and ':'")
    end
  end
  if f.user then identifier('user', f.user, 128) end
  if f.key and (#f.key == 0 or #f.key > 256) then invalid('key', 'must be 1 to 256 bytes') end
  check_notification(f)
  if f.ttl then
    local ttl = string.match(f.ttl, '^%+?%d+$') and tonumber(f.ttl)
    if not ttl or ttl > MAX_TTL then
      invalid('ttl', 'must be a whole number of seconds from 0 to ' .. MAX_TTL)
    end
  end
  if f.urgency and not URGENCIES[f.urgency] then
    invalid('urgency', 'must be very-low, low, normal or high')
  end
  local headers = 0
  for name, value in pairs(f) do
    if string.sub(name, 1, 2) == 'h.' then
      headers = headers + 1
      identifier(name, string.sub(name, 3), 64)
      if #value > 256 then invalid(name, 'value must be at most 256 bytes') end
    end
  end
  if headers > 32 then invalid('headers', 'at most 32 headers (h.<name> fields)') end
  local size = payload_len(f)
  if size > MAX_PAYLOAD_BYTES then
    invalid(f.title and 'notification' or 'data', 'the push payload would be ' .. size .. ' bytes; at most ' .. MAX_PAYLOAD_BYTES .. ' fit in one Web Push message')
  end
  local now = now_ms()
  local publish_at = f.publish_at and time_ms('publish_at', f.publish_at)
  if clock and publish_at and publish_at > now + MAX_CLOCK_SKEW_MS then
    invalid('publish_at', 'is ahead of the server clock by more than events.max_clock_skew')
  end
  local deliver_at = 0
  if f.deliver_at then
    deliver_at = time_ms('deliver_at', f.deliver_at)
    if clock and deliver_at > now + MAX_DELAY_MS then
      invalid('deliver_at', 'must be at most ' .. (MAX_DELAY_MS / 86400000) .. ' days ahead')
    end
  end
  -- By bytes, as herald's Rust side sorts: Lua's `<` on strings follows the
  -- server's collation locale, which is not C on every machine.
  table.sort(names, by_bytes)
  local content = {}
  for _, name in ipairs(names) do
    if not NOT_CONTENT[name] then
      content[#content + 1] = #name .. ':' .. name .. '=' .. #f[name] .. ':' .. f[name]
    end
  end
  return f, redis.sha1hex(table.concat(content, '\n')), deliver_at, now
end

-- The stream entry of a producer's call: v and id first, then the fields as given.
local function entry(argv, first, f)
  local out = { 'v', ENTRY_VERSION }
  if f.id then
    out[#out + 1] = 'id'
    out[#out + 1] = f.id
  end
  for i = first, #argv, 2 do
    if argv[i] ~= 'v' and argv[i] ~= 'id' then
      out[#out + 1] = argv[i]
      out[#out + 1] = argv[i + 1]
    end
  end
  return out
end

-- Runs `work`, answering a refusal (INVALID, CONFLICT) as a plain error reply.
local function refusing(work)
  return function(keys, argv)
    local ok, result = pcall(work, keys, argv)
    if ok then
      return result
    end
    if type(result) == 'string' then
      local refusal = string.match(result, '(INVALID .*)$') or string.match(result, '(CONFLICT .*)$')
      if refusal then
        return redis.error_reply(refusal)
      end
    end
    error(result)
  end
end

-- Writes one checked event: refuses (CONFLICT) or answers a duplicate of an
-- id seen within the window, puts an event due later in the schedule, and
-- adds any other to the stream. `id` may be nil (a producer's event without
-- one: not deduplicated). The entry's fields are src[first..last] (the
-- call's own arguments, for a batch: no copy). Returns {stream id, outcome}.
local function store(stream, dedup, schedule, scheduled_events, window, id, digest, deliver_at, now, src, first, last)
  if id then
    local seen = redis.call('GET', dedup)
    if seen then
      local was, where = string.match(seen, '^(%S+) (%S+)$')
      if was == digest then
        if where == 'scheduled' then return { '', 'duplicate' } end
        return { where, 'duplicate' }
      end
      error('CONFLICT event id ' .. id .. ' was published before with other content (entry ' .. tostring(where) .. ')', 0)
    end
  end
  if deliver_at > now then
    if not id then
      invalid('id', 'is required with a deliver_at ahead of now: the schedule keeps events by id')
    end
    redis.call('ZADD', schedule, deliver_at, id)
    redis.call('HSET', scheduled_events, id, cjson.encode({ unpack(src, first, last) }))
    redis.call('SET', dedup, digest .. ' scheduled', 'PX', window)
    return { '', 'scheduled' }
  end
  local entry_id = redis.call('XADD', stream, '*', unpack(src, first, last))
  if id then
    redis.call('SET', dedup, digest .. ' ' .. entry_id, 'PX', window)
  end
  return { entry_id, 'added' }
end

local function publish(keys, argv)
  local stream = keys[1]
  local dedup, schedule, scheduled_events = keys[2], keys[3], keys[4]
  local window, fields = DEDUP_WINDOW_MS, nil
  local f, digest, deliver_at, now
  if #keys == 4 then
    window, digest, deliver_at = tonumber(argv[1]), argv[2], tonumber(argv[3])
    if not window or window < 1 or not deliver_at or #argv % 2 ~= 0 then
      invalid('arguments', 'the four-key form starts with the dedup window (ms), the digest, deliver_at (ms, 0 for none) and the id, then the entry')
    end
    f = { id = argv[4] }
    fields = { unpack(argv, 5) }
    now = deliver_at > 0 and now_ms() or 0
  end
  if #keys == 1 then
    local tag = string.match(stream, '^(.*):events$')
    if not tag then
      invalid('stream', 'the one key must be a herald stream, like {herald:p0}:events')
    end
    -- A stream no worker reads would keep the event forever: herald creates
    -- its streams (and their consumer group) at start.
    if redis.call('EXISTS', stream) == 0 then
      invalid('stream', 'no herald stream is called ' .. stream .. ' (herald creates its streams when a worker starts; `herald stats` lists them)')
    end
    schedule, scheduled_events = tag .. ':scheduled', tag .. ':scheduled-events'
  elseif #keys ~= 4 then
    invalid('keys', 'expected 1 key (the stream) or 4 (stream, dedup record, schedule, scheduled events)')
  end
  if #keys == 1 then
    f, digest, deliver_at, now = check(argv, 1, true)
    fields = entry(argv, 1, f)
  end
  if f.id and #keys == 1 then
    dedup = string.match(stream, '^(.*):events$') .. ':dedup:' .. f.id
  end
  return store(stream, dedup, schedule, scheduled_events, window, f.id, digest, deliver_at, now, fields, 1, #fields)
end

-- herald's own publish of many events of one partition in one call (the API,
-- `herald publish` and the spool drain use it): each event as the four-key
-- form takes it, each answered on its own, so that one refused event refuses
-- no other. Returns one reply per event: {stream id, outcome}, or the error
-- (INVALID, CONFLICT) the four-key form would have answered.
local function publish_batch(keys, argv)
  local stream, schedule, scheduled_events = keys[1], keys[2], keys[3]
  local window = tonumber(argv[1])
  if not window or window < 1 then
    invalid('arguments', 'the batch starts with the dedup window (ms)')
  end
  -- The whole layout is checked before the first write: a malformed call
  -- writes nothing. Each event's place in ARGV and its deliver_at, by index.
  local at, due = {}, {}
  local a = 2
  for k = 4, #keys do
    local deliver_at, count = tonumber(argv[a + 1]), tonumber(argv[a + 3])
    if not deliver_at or not count or count < 0 or count % 1 ~= 0 or a + 3 + 2 * count > #argv then
      invalid('arguments', 'each event of a batch is its digest, deliver_at (ms, 0 for none), id, number of fields, then its fields')
    end
    at[#at + 1], due[#due + 1] = a, deliver_at
    a = a + 4 + 2 * count
  end
  if a ~= #argv + 1 then
    invalid('arguments', 'the batch has ' .. (#keys - 3) .. ' dedup records but arguments for another number of events')
  end
  local replies = {}
  for i, a in ipairs(at) do
    local last = (at[i + 1] or #argv + 1) - 1
    local now = due[i] > 0 and now_ms() or 0
    local ok, result = pcall(store, stream, keys[3 + i], schedule, scheduled_events, argv[1], argv[a + 2], argv[a], due[i], now, argv, a + 4, last)
    if not ok then
      local refusal = type(result) == 'string' and (string.match(result, '(INVALID .*)$') or string.match(result, '(CONFLICT .*)$'))
      if not refusal then
        error(result)
      end
      result = redis.error_reply(refusal)
    end
    replies[i] = result
  end
  return replies
end

local function reserve(keys, argv)
  if #keys ~= 1 then
    invalid('keys', "expected 1 key: the dedup record in the id's partition")
  end
  local window = tonumber(argv[2])
  if not window or window < 0 then
    invalid('arguments', 'expected the partition, then the dedup window in ms (0: the configured one), then the fields')
  end
  local f, digest = check(argv, 3, window == 0)
  if window == 0 then window = DEDUP_WINDOW_MS end
  if not f.id then invalid('id', 'is required to reserve it') end
  local seen = redis.call('GET', keys[1])
  if seen then
    local was, where = string.match(seen, '^(%S+) (%S+)$')
    if was == digest then return { 'seen', where } end
    return { 'conflict', where }
  end
  redis.call('SET', keys[1], digest .. ' ' .. argv[1], 'PX', window)
  return { 'reserved', argv[1] }
end

redis.register_function('herald_publish', refusing(publish))
redis.register_function('herald_reserve', refusing(reserve))
redis.register_function('herald_publish_batch', refusing(publish_batch))
