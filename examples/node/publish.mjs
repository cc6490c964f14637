// Publishing to herald from Node with ioredis (npm install ioredis):
// FCALL herald_publish, idempotent by id, and a plain XADD.
// README, "Publishing with XADD or FCALL", has every field and rule.
//
//   REDIS_URL=redis://127.0.0.1:6379 node examples/node/publish.mjs
import Redis from "ioredis";

const redis = new Redis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379");
const stream = "{herald:p0}:events"; // redis.partitions = 1 (the default)

// herald's partition of an event with redis.partitions > 1: FNV-1a (32 bits)
// of its key (or of its id without one), modulo the partitions.
export function partitionFor(key, partitions) {
  if (partitions === 1) return 0;
  let h = 0x811c9dc5;
  for (const byte of Buffer.from(key, "utf8")) {
    h ^= byte;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % partitions;
}

const fields = {
  id: "visit-983-entry", topic: "parking.lot-3.entry", user: "u-42",
  key: "visit-983", title: "Vehicle entered lot 3", body: "Plate M-CD 42",
};
const [streamId, outcome] = await redis.fcall("herald_publish", 1, stream, ...Object.entries(fields).flat());
console.log(outcome, streamId); // "added" the first time, "duplicate" after

try {
  await redis.fcall("herald_publish", 1, stream, ...Object.entries({ ...fields, title: "other" }).flat());
} catch (refused) {
  console.log(refused.message); // CONFLICT event id visit-983-entry was published before ...
}

console.log(await redis.xadd(stream, "*", "topic", "parking.lot-3.notice", "user", "u-42", "title", "Lot 3 closes at 22:00"));
redis.disconnect();
