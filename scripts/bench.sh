#!/usr/bin/env bash
# End-to-end throughput: `herald publish` → Redis stream (AOF everysec) →
# `herald up` (API + worker: route, encrypt, VAPID, HTTP POST, XACK) → the sink
# in fast mode (it counts arrivals without decrypting, so the CPU measured is
# herald's). Everything runs on this machine, on loopback.
#
#   scripts/bench.sh [EVENTS] [DEVICES_PER_USER]     (defaults: 20000 1)
#   BENCH_HERALD_BIN=/tmp/herald-old scripts/bench.sh      (another build, same setup)
#
# Prints the publish rate, the delivery rate (pushes accepted per second), the
# CPU each process used, and Redis's work per event: the commands it ran
# (`INFO commandstats`, reset before the publish) and their share, per command.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-20000}
DEVICES=${2:-1}

# BENCH_HERALD_BIN=/path/to/herald measures another build (e.g. an older commit's) against the same setup.
if [ -z "${BENCH_HERALD_BIN:-}" ]; then
  cargo build --release --quiet
fi
BIN=$(realpath "${BENCH_HERALD_BIN:-target/release/herald}")
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port); aport=$(free_port); sport=$(free_port)
# Default settings whatever config.toml the checkout has (an older build may not know its keys).
cd "$work"
alive() { kill -0 "$1" 2>/dev/null || { echo "bench: $2 exited; its log:" >&2; tail -5 "$3" >&2; exit 1; }; }

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # user + system ticks of a process

redis-server --port "$rport" --bind 127.0.0.1 --dir "$work" --appendonly yes --appendfsync everysec \
  --maxmemory-policy noeviction --save "" --daemonize no --logfile "$work/redis.log" &
pids+=($!)
redis_pid=$!
until redis-cli -p "$rport" ping >/dev/null 2>&1; do sleep 0.05; done

"$BIN" up --redis-url "redis://127.0.0.1:$rport" --listen "127.0.0.1:$aport" --data-dir "$work" \
  --allow-insecure-endpoints --log-format json >/dev/null 2>"$work/herald.log" &
pids+=($!)
herald_pid=$!
until curl -sf "http://127.0.0.1:$aport/readyz" >/dev/null; do alive "$herald_pid" "herald up" "$work/herald.log"; sleep 0.05; done

"$BIN" sink --fast --sink-listen "127.0.0.1:$sport" --out /dev/null \
  --register "$DEVICES" --user bench --api "http://127.0.0.1:$aport" 2>"$work/sink.log" &
pids+=($!)
sink_pid=$!
until [ "$(curl -s "http://127.0.0.1:$aport/v1/subscriptions?user=bench" | jq '.subscriptions | length')" = "$DEVICES" ]; do
  sleep 0.05
done

expected=$((EVENTS * DEVICES))
echo "events: $EVENTS, devices: $DEVICES, pushes expected: $expected, cores: $(nproc)"
c_herald=$(cpu "$herald_pid"); c_sink=$(cpu "$sink_pid"); c_redis=$(cpu "$redis_pid")
redis-cli -p "$rport" config resetstat >/dev/null
start=$(date +%s.%N)
"$BIN" publish --redis-url "redis://127.0.0.1:$rport" --user bench --topic bench.run --title "bench" --count "$EVENTS" 2>/dev/null
while :; do
  alive "$herald_pid" "herald up" "$work/herald.log"
  got=$(curl -s "http://127.0.0.1:$sport/admin/count" | jq .delivered)
  [ "$got" -ge "$expected" ] && break
  sleep 0.02
done
end=$(date +%s.%N)
c_herald=$(( $(cpu "$herald_pid") - c_herald )); c_sink=$(( $(cpu "$sink_pid") - c_sink )); c_redis=$(( $(cpu "$redis_pid") - c_redis ))
pending=$(redis-cli -p "$rport" xpending '{herald:p0}:events' herald | head -1)
commandstats=$(redis-cli -p "$rport" info commandstats | tr -d '\r')
python3 - "$start" "$end" "$expected" "$pending" "$c_herald" "$c_sink" "$c_redis" "$(getconf CLK_TCK)" "$EVENTS" "$commandstats" <<'PY'
import re, sys
start, end, n, pending = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
herald, sink, redis, tck = (int(x) for x in sys.argv[5:9])
events, stats = int(sys.argv[9]), sys.argv[10]
secs = end - start
print(f"delivered {n} pushes in {secs:.2f}s: {n/secs:.0f} pushes/s end to end; pending after: {pending}")
print(f"CPU seconds: herald {herald/tck:.2f} ({herald/tck/n*1e6:.0f} us/push, {n/(herald/tck):.0f} pushes per herald CPU-second), "
      f"sink {sink/tck:.2f}, redis {redis/tck:.2f}")
# cmdstat_<name>:calls=N,usec=U,... (the publish and the counting of arrivals included)
calls = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(r"cmdstat_(\S+?):calls=(\d+),usec=(\d+)", stats)}
total = sum(c for c, _ in calls.values())
usec = sum(u for _, u in calls.values())
top = sorted(calls.items(), key=lambda kv: -kv[1][0])[:8]
print(f"redis commands: {total/events:.1f} per event, {usec/events:.1f} us of command time per event; "
      + ", ".join(f"{name} {c/events:.2f}" for name, (c, _) in top))
PY
