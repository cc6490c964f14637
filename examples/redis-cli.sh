#!/bin/sh
# Publishing to herald from the shell with redis-cli: a plain XADD, then the
# idempotent FCALL herald_publish (twice: one event). README, "Publishing with
# XADD or FCALL", has every field and rule.
#
#   REDIS_URL=redis://127.0.0.1:6379 HERALD_USER=u-42 sh examples/redis-cli.sh
set -eu
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
PREFIX=${HERALD_PREFIX:-herald}
USER_ID=${HERALD_USER:-u-42}
# One partition (redis.partitions = 1, the default): every event goes to p0.
STREAM="{$PREFIX:p0}:events"

# Plain XADD: topic and title are required; user says whose devices get it
# (without one, the subscriptions whose topic patterns match). Not idempotent:
# a retried XADD is a second event.
redis-cli -u "$REDIS_URL" XADD "$STREAM" '*' \
  topic parking.lot-1.entry user "$USER_ID" \
  title 'Vehicle entered lot 1' body 'Plate B-XY 123, 09:41'

# FCALL herald_publish: the same fields, with an id. Sent twice (a retry after a
# timeout, say), it is one event: the second answers the first's stream id
# and "duplicate".
for attempt in 1 2; do
  redis-cli -u "$REDIS_URL" FCALL herald_publish 1 "$STREAM" \
    id "${HERALD_EVENT_ID:-visit-981-exit}" \
    topic parking.lot-1.exit user "$USER_ID" key visit-981 \
    title 'Vehicle left lot 1' body 'Parking fee 4.50 EUR' url /visits/981
done
