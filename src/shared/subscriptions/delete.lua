-- Delete one subscription and its index entries, atomically.
-- KEYS[1] the subscription hash
-- KEYS[2] the set of every subscription id
-- KEYS[3] the subscriptions version counter
-- KEYS[4] its user's set, as the caller read it (KEYS[1] again when none)
-- KEYS[5] the stream of subscription changes
-- ARGV[1] subscription id
-- ARGV[2] its user as the caller read it ('' for none)
-- ARGV[3] about how many changes the stream keeps
-- ARGV[4] the user it must belong to ('' for anyone): a subscriber token's
-- Returns 1 when deleted, 0 when there was none (or it is another user's than
-- ARGV[4]), -1 when the stored user changed since the caller read it (the
-- caller reads again and retries).
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 0
end
local stored_user = redis.call('HGET', KEYS[1], 'user') or ''
if ARGV[4] ~= '' and stored_user ~= ARGV[4] then
  return 0
end
if stored_user ~= ARGV[2] then
  return -1
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('SREM', KEYS[4], ARGV[1])
end
local version = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 'v', version, 'id', ARGV[1])
return 1
