// Publishing to herald from Java with Jedis 5 (redis.clients:jedis):
// FCALL herald_publish, idempotent by id, and a plain XADD.
// README, "Publishing with XADD or FCALL", has every field and rule.
//
//   java -cp "$(cat classpath.txt)" Publish.java redis://127.0.0.1:6379
// where classpath.txt lists Jedis 5 and its dependencies (commons-pool2, gson,
// slf4j-api, json), e.g. from `mvn dependency:build-classpath` of a project
// depending on redis.clients:jedis:5.2.0.
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import redis.clients.jedis.JedisPooled;
import redis.clients.jedis.StreamEntryID;
import redis.clients.jedis.exceptions.JedisDataException;

public class Publish {
  /** herald's partition with redis.partitions > 1: FNV-1a (32 bits) of the key (or the id), modulo the partitions. */
  static int partitionFor(String key, int partitions) {
    if (partitions == 1) return 0;
    int h = 0x811c9dc5;
    for (byte b : key.getBytes(StandardCharsets.UTF_8)) {
      h ^= (b & 0xff);
      h *= 0x01000193;
    }
    return (int) (Integer.toUnsignedLong(h) % partitions);
  }

  public static void main(String[] args) {
    JedisPooled redis = new JedisPooled(args.length > 0 ? args[0] : "redis://127.0.0.1:6379");
    String stream = "{herald:p" + partitionFor("visit-985", 1) + "}:events";
    List<String> fields = List.of(
        "id", "visit-985-entry", "topic", "parking.lot-5.entry", "user", "u-42",
        "key", "visit-985", "title", "Vehicle entered lot 5");
    try {
      List<?> reply = (List<?>) redis.fcall("herald_publish", List.of(stream), fields);
      System.out.println(reply.get(1) + " " + reply.get(0)); // added <stream id>, or duplicate <the first one's>
    } catch (JedisDataException refused) {
      System.out.println("refused: " + refused.getMessage()); // INVALID <field>: why, or CONFLICT ...
    }
    StreamEntryID id = redis.xadd(stream, StreamEntryID.NEW_ENTRY,
        Map.of("topic", "parking.lot-5.notice", "user", "u-42", "title", "Lot 5 closes at 22:00"));
    System.out.println("xadd: " + id);
  }
}
