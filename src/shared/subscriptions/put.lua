-- Create or update one subscription and its indexes, atomically.
-- KEYS[1] the subscription hash
-- KEYS[2] the set of every subscription id
-- KEYS[3] the subscriptions version counter
-- KEYS[4] the new user's set of subscription ids (KEYS[1] again when no user)
-- KEYS[5] the previous user's set, as the caller read it (KEYS[1] again when none)
-- KEYS[6] the stream of subscription changes
-- ARGV[1] subscription id
-- ARGV[2] new user ('' for none)
-- ARGV[3] previous user as the caller read it ('' for none)
-- ARGV[4] about how many changes the stream keeps
-- ARGV[5] most subscriptions one user may have (0: no limit)
-- ARGV[6] the user an existing subscription must belong to ('' for anyone):
--         a subscriber token's, checked here so no write slips in between
-- ARGV[7..] field/value pairs of the hash
-- Returns 1 when created, 0 when updated, -1 when the stored user changed since
-- the caller read it (the caller reads again and retries), -2 when the new user
-- has ARGV[5] subscriptions already, -3 when it exists for another user than
-- ARGV[6] (nothing is changed for either).
local stored_user = redis.call('HGET', KEYS[1], 'user') or ''
local existed = redis.call('EXISTS', KEYS[1]) == 1
if ARGV[6] ~= '' and existed and stored_user ~= ARGV[6] then
  return -3
end
if stored_user ~= ARGV[3] then
  return -1
end
local max = tonumber(ARGV[5])
if ARGV[2] ~= '' and max > 0 and redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 0
    and redis.call('SCARD', KEYS[4]) >= max then
  return -2
end
if ARGV[3] ~= '' and ARGV[3] ~= ARGV[2] then
  redis.call('SREM', KEYS[5], ARGV[1])
end
local created = redis.call('HGET', KEYS[1], 'created_at')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
if created then
  redis.call('HSET', KEYS[1], 'created_at', created)
end
if ARGV[2] ~= '' then
  redis.call('SADD', KEYS[4], ARGV[1])
end
redis.call('SADD', KEYS[2], ARGV[1])
local version = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[4], '*', 'v', version, 'id', ARGV[1])
if existed then
  return 0
end
return 1
