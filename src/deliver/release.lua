-- At the end of an entry's processing: release its lease and its key's lock,
-- each only if it is still this process's.
-- KEYS[1] the entry's lease
-- KEYS[2] the ordering key's lock (KEYS[1] again when the event is not ordered)
-- ARGV[1] this consumer
-- ARGV[2] the lock's holder, '' when the event is not ordered
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
end
return 1
