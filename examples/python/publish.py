"""Publishing to herald from Python with redis-py (pip install "redis>=5").

An idempotent publish (FCALL herald_publish, sent twice: one event), a
conflicting one (refused, naming the id) and a plain XADD. README,
"Publishing with XADD or FCALL", has every field and rule.

    REDIS_URL=redis://127.0.0.1:6379 HERALD_USER=u-42 python3 examples/python/publish.py
"""

import os

import redis


def partition_for(key: str, partitions: int) -> int:
    """herald's partition of an event: FNV-1a (32 bits) of its key, or of its id
    when it has no key, modulo redis.partitions."""
    if partitions == 1:
        return 0
    h = 0x811C9DC5
    for byte in key.encode():
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h % partitions


class Herald:
    def __init__(self, r: redis.Redis, prefix: str = "herald", partitions: int = 1):
        self.r, self.prefix, self.partitions = r, prefix, partitions

    def stream(self, partition: int) -> str:
        return f"{{{self.prefix}:p{partition}}}:events"

    def publish(self, event_id: str, **fields: str):
        """Publishes once per id: returns (stream id, "added" | "duplicate" | "scheduled")."""
        args = ["id", event_id]
        for name, value in fields.items():
            args += [name, str(value)]
        home = partition_for(event_id, self.partitions)
        target = partition_for(fields.get("key", event_id), self.partitions)
        if home != target:
            # The id's own partition remembers it too, so the same id with
            # another key is a conflict rather than a second event.
            record = f"{{{self.prefix}:p{home}}}:dedup:{event_id}"
            # 0: herald's configured dedup window.
            verdict, where = self.r.fcall("herald_reserve", 1, record, f"p{target}", 0, *args)
            if verdict == "conflict":
                raise redis.ResponseError(f"CONFLICT event id {event_id} was published before with other content ({where})")
        stream_id, outcome = self.r.fcall("herald_publish", 1, self.stream(target), *args)
        return stream_id, outcome


def main() -> None:
    r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"), decode_responses=True)
    herald = Herald(r, os.environ.get("HERALD_PREFIX", "herald"), int(os.environ.get("HERALD_PARTITIONS", "1")))
    user = os.environ.get("HERALD_USER", "u-42")
    event_id = os.environ.get("HERALD_EVENT_ID", "visit-982-entry")

    for attempt in (1, 2):
        stream_id, outcome = herald.publish(
            event_id, topic="parking.lot-2.entry", user=user, key="visit-982",
            title="Vehicle entered lot 2", body="Plate K-AB 77", ttl=600,
        )
        print(f"attempt {attempt}: {outcome} {stream_id}")

    try:
        herald.publish(event_id, topic="parking.lot-2.entry", user=user, key="visit-982", title="Something else")
    except redis.ResponseError as refused:
        print(f"refused: {refused}")

    try:
        herald.publish("visit-982-bad", topic="parking lot", user=user, title="x")
    except redis.ResponseError as refused:
        print(f"refused: {refused}")

    # Plain XADD: no id, so no idempotency; herald names it xadd-<stream id>.
    # Without a key, any partition may take it (with one, its key's partition).
    stream_id = r.xadd(herald.stream(0), {
        "topic": "parking.lot-2.notice", "user": user, "title": "Lot 2 closes at 22:00",
    })
    print(f"xadd: {stream_id}")


if __name__ == "__main__":
    main()
