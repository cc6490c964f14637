-- Release a key's lock at the end of processing, if this entry holds it.
-- KEYS[1] the key's lock
-- ARGV[1] the holder (the entry's stream id)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
