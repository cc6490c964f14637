// Publishing to herald from Go with go-redis (go get github.com/redis/go-redis/v9):
// FCALL herald_publish, idempotent by id, and a plain XADD.
// README, "Publishing with XADD or FCALL", has every field and rule.
//
//	cd examples/go && go mod tidy && REDIS_URL=redis://127.0.0.1:6379 go run .
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/redis/go-redis/v9"
)

// PartitionFor is herald's partition of an event with redis.partitions > 1:
// FNV-1a (32 bits) of its key (or of its id without one), modulo the partitions.
func PartitionFor(key string, partitions uint32) uint32 {
	if partitions == 1 {
		return 0
	}
	h := uint32(0x811c9dc5)
	for _, b := range []byte(key) {
		h ^= uint32(b)
		h *= 0x01000193
	}
	return h % partitions
}

func main() {
	ctx := context.Background()
	url := os.Getenv("REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379"
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		panic(err)
	}
	rdb := redis.NewClient(opts)
	stream := fmt.Sprintf("{herald:p%d}:events", PartitionFor("visit-984", 1))

	args := []interface{}{
		"id", "visit-984-entry", "topic", "parking.lot-4.entry", "user", "u-42",
		"key", "visit-984", "title", "Vehicle entered lot 4",
	}
	reply, err := rdb.FCall(ctx, "herald_publish", []string{stream}, args...).StringSlice()
	if err != nil {
		// INVALID <field>: why, or CONFLICT event id ...: nothing was added.
		fmt.Println("refused:", err)
		return
	}
	fmt.Println(reply[1], reply[0]) // added <stream id>, or duplicate <the first one's>

	id, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []interface{}{
		"topic", "parking.lot-4.notice", "user", "u-42", "title", "Lot 4 closes at 22:00",
	}}).Result()
	fmt.Println("xadd:", id, err)
}
