-- Release an entry's lease at the end of processing, if it is still ours.
-- KEYS[1] the entry's lease
-- ARGV[1] this consumer
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
