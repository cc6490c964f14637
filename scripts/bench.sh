#!/usr/bin/env bash
# herald's benchmark, one command, everything on this machine:
#
#   scripts/bench.sh [EVENTS]          (default 10000)
#
# 1. The crypto ceiling: Web Push messages built per second on every core
#    (`cargo bench --bench crypto`), the most any pipeline could push here.
# 2. End to end: a Redis of its own (AOF, fsync every second), `herald api` to
#    register devices, the sink (`herald sink --fast`: it counts arrivals
#    without decrypting, so the CPU measured is herald's) over HTTPS and HTTP/2
#    with a certificate authority it makes (herald trusts it through
#    push.extra_ca_file). EVENTS events are queued with `herald publish`, then
#    1 or 2 `herald worker` processes drain them, for 1 and for 10 devices per
#    event. Per run: deliveries/s, herald CPU per push, Redis CPU and Redis
#    commands per event (`INFO commandstats`, reset after the publish).
# 3. The peer: the same events queued in BullMQ 5 and drained by one Node
#    worker sending with `web-push` 3.6 (concurrency 50), to the same sink over
#    the same transport (Node speaks HTTP/1.1 there), from the same Redis.
#    Installed from npm into target/bench-peer the first time.
# 4. Latency, publish to push accepted, p50/p99/p999 at a steady 1,000 events/s
#    for 20 s (BENCH_LATENCY_RATE, BENCH_LATENCY_SECONDS), and the worker's
#    memory at the end: the long mode is BENCH_LATENCY_SECONDS=600 (or more),
#    whose RSS at the end is the worker's steady state.
# 5. Ingest: events/s through `herald api` with single-event POSTs (64
#    keep-alive clients) and with batches of 100, beside the XADD ceiling of
#    the same Redis (`cargo bench --bench ingest`).
# 6. One event to 100,000 devices: the worker's peak memory (`cargo bench --bench
#    fanout`; BENCH_FANOUT=0 skips it).
#
# BENCH_TRANSPORT=http    plain http instead of HTTPS (figures shown beside, never instead)
# BENCH_PEER=0            skip the peer
# BENCH_HERALD_BIN=PATH   measure another build of herald (e.g. an older commit's) the same way
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
EVENTS=${1:-10000}
TRANSPORT=${BENCH_TRANSPORT:-https}
PEER=${BENCH_PEER:-1}

for tool in redis-server redis-cli jq curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (scripts/test.sh installs redis-server; apt-get install jq curl python3)" >&2; exit 1; }
done
if [ -z "${BENCH_HERALD_BIN:-}" ]; then
  cargo build --release --quiet
fi
BIN=$(realpath "${BENCH_HERALD_BIN:-target/release/herald}")
ceiling_line=$(cargo bench --quiet --bench crypto 2>/dev/null | tee /dev/stderr | grep '^crypto ceiling')
ceiling=$(echo "$ceiling_line" | awk '{print $3}')

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
alive() { kill -0 "$1" 2>/dev/null || { echo "bench: $2 exited; its log:" >&2; tail -5 "$3" >&2; exit 1; }; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # user + system ticks of a process
peak_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }   # peak resident memory
rport=$(free_port); aport=$(free_port); sport=$(free_port)
redis_url="redis://127.0.0.1:$rport"
# Default settings whatever config.toml the checkout has (an older build may not know its keys).
cd "$work"
export HERALD_ADMIN__ENABLED=false HERALD_PUSH__ALLOW_INSECURE_ENDPOINTS=true

redis-server --port "$rport" --bind 127.0.0.1 --dir "$work" --appendonly yes --appendfsync everysec \
  --maxmemory-policy noeviction --save "" --daemonize no --logfile "$work/redis.log" &
pids+=($!)
redis_pid=$!
until redis-cli -p "$rport" ping >/dev/null 2>&1; do sleep 0.05; done

tls_args=()
if [ "$TRANSPORT" = https ]; then
  tls_args=(--tls --tls-ca-out "$work/ca.pem")
  export HERALD_PUSH__EXTRA_CA_FILE="$work/ca.pem" NODE_EXTRA_CA_CERTS="$work/ca.pem"
fi
"$BIN" sink --fast "${tls_args[@]}" --sink-listen "127.0.0.1:$sport" --out /dev/null 2>"$work/sink.log" &
pids+=($!)
sink_pid=$!
until curl -sf "http://127.0.0.1:$sport/admin/count" >/dev/null 2>&1 || curl -skf "https://127.0.0.1:$sport/admin/count" >/dev/null 2>&1; do
  alive "$sink_pid" "herald sink" "$work/sink.log"; sleep 0.05
done
sink_admin="$TRANSPORT://127.0.0.1:$sport/admin"
delivered() { curl -sk "$sink_admin/count" | jq .delivered; }

"$BIN" vapid generate --out "$work/vapid_private_key" >/dev/null
"$BIN" api --redis-url "$redis_url" --listen "127.0.0.1:$aport" --data-dir "$work" --log-format json >/dev/null 2>"$work/api.log" &
pids+=($!)
api_pid=$!
until curl -sf "http://127.0.0.1:$aport/readyz" >/dev/null; do alive "$api_pid" "herald api" "$work/api.log"; sleep 0.05; done

# Devices made by the sink as a browser would, registered with herald for a user,
# and kept for the peer: {"<user>": [subscription, ...]}.
echo '{}' >"$work/subscriptions.json"
register() {
  local user=$1 n=$2
  curl -sk -X POST "$sink_admin/subscriptions?count=$n" | jq -c '.subscriptions[].subscription' | while read -r sub; do
    curl -sf -X POST "http://127.0.0.1:$aport/v1/subscriptions" -H 'content-type: application/json' \
      -d "{\"user\":\"$user\",\"subscription\":$sub}" >/dev/null
    jq --arg u "$user" --argjson s "$sub" '.[$u] += [$s]' "$work/subscriptions.json" >"$work/s.tmp" && mv "$work/s.tmp" "$work/subscriptions.json"
  done
}
register one 1
register ten 10

results="$work/results.jsonl"
# measure NAME DEVICES PUSHES COMMAND...: starts the drainers, waits for PUSHES more deliveries.
measure() {
  local name=$1 devices=$2 pushes=$3; shift 3
  local before c_redis start end cpu_sum=0 target
  before=$(delivered); target=$((before + pushes))
  redis-cli -p "$rport" config resetstat >/dev/null
  c_redis=$(cpu "$redis_pid")
  start=$(date +%s.%N)
  local drainers=()
  "$@"
  drainers=("${started[@]}")
  while [ "$(delivered)" -lt "$target" ]; do
    for p in "${drainers[@]}"; do kill -0 "$p" 2>/dev/null || { echo "bench: a drainer of $name exited; see $work/*.log" >&2; tail -5 "$work"/*.log >&2; exit 1; }; done
    sleep 0.02
  done
  end=$(date +%s.%N)
  local rss_max=0
  for p in "${drainers[@]}"; do
    if [ -r "/proc/$p/stat" ]; then cpu_sum=$((cpu_sum + $(cpu "$p"))); fi
    local hwm; hwm=$(peak_kb "$p"); [ "$hwm" -gt "$rss_max" ] && rss_max=$hwm
  done
  c_redis=$(( $(cpu "$redis_pid") - c_redis ))
  for p in "${drainers[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${drainers[@]}"; do wait "$p" 2>/dev/null || true; done
  local stats
  stats=$(redis-cli -p "$rport" info commandstats | tr -d '\r')
  python3 - "$name" "$devices" "$pushes" "$start" "$end" "$cpu_sum" "$c_redis" "$(getconf CLK_TCK)" "$stats" "$rss_max" >>"$results" <<'PY'
import json, re, sys
name, devices, pushes, start, end, cpu, redis_cpu, tck, stats, rss_kb = sys.argv[1:]
pushes, devices, tck = int(pushes), int(devices), int(tck)
events = pushes // devices
secs = float(end) - float(start)
calls = {m[0]: int(m[1]) for m in re.findall(r"cmdstat_(\S+?):calls=(\d+),", stats)}
usec = {m[0]: int(m[1]) for m in re.findall(r"cmdstat_(\S+?):calls=\d+,usec=(\d+),", stats)}
# A script's time includes the commands it runs (each also counted on its own).
scripts = sum(usec.get(c, 0) for c in ("evalsha", "eval", "fcall"))
top = sorted(calls.items(), key=lambda kv: -kv[1])
print(json.dumps({
    "name": name, "devices": devices, "pushes": pushes, "secs": secs,
    "rate": pushes / secs,
    "cpu_us_per_push": int(cpu) / tck / pushes * 1e6,
    "redis_cpu_us_per_event": int(redis_cpu) / tck / events * 1e6,
    "commands_per_event": sum(calls.values()) / events,
    "script_us_per_event": scripts / events,
    "peak_rss_mb": int(rss_kb) / 1024,
    "commands": ", ".join(f"{k} {v / events:.2f}" for k, v in top if v / events >= 0.01),
}))
PY
  tail -1 "$results" | jq -r '"\(.name): \(.pushes) pushes in \(.secs|.*100|round/100) s, \(.rate|round) pushes/s, \(.cpu_us_per_push|round) us CPU per push, Redis \(.redis_cpu_us_per_event|round) us CPU (\(.script_us_per_event|round) us of it in scripts) and \(.commands_per_event|.*10|round/10) commands per event"' >&2
}

herald_workers() {   # herald_workers N: starts N `herald worker` processes
  started=()
  for i in $(seq 1 "$1"); do
    "$BIN" worker --redis-url "$redis_url" --data-dir "$work" --log-format json >/dev/null 2>"$work/worker-$i.log" &
    started+=($!)
  done
}
for devices in 1 10; do
  user=$([ "$devices" = 1 ] && echo one || echo ten)
  for workers in 1 2; do
    "$BIN" publish --redis-url "$redis_url" --user "$user" --topic bench.run --title bench --count "$EVENTS" >/dev/null 2>&1
    measure "herald, $workers worker process(es), $devices device(s) per event" "$devices" $((EVENTS * devices)) herald_workers "$workers"
  done
done

if [ "$PEER" = 1 ]; then
  peer_dir="$repo/target/bench-peer"
  if [ ! -d "$peer_dir/node_modules/bullmq" ] || [ ! -d "$peer_dir/node_modules/web-push" ]; then
    command -v npm >/dev/null || { echo "bench: the peer needs node and npm (apt-get install nodejs npm), or BENCH_PEER=0" >&2; exit 1; }
    mkdir -p "$peer_dir"
    echo "bench: installing bullmq@5 and web-push@3.6 from npm into $peer_dir" >&2
    (cd "$peer_dir" && npm install --silent --no-audit --no-fund bullmq@5 web-push@3.6 >/dev/null)
  fi
  cp "$repo/scripts/bench/peer.mjs" "$peer_dir/peer.mjs"
  peer_worker() {
    started=()
    node "$peer_dir/peer.mjs" work "$redis_url" "$work/subscriptions.json" >"$work/peer.log" 2>&1 &
    started+=($!)
  }
  for devices in 1 10; do
    user=$([ "$devices" = 1 ] && echo one || echo ten)
    node "$peer_dir/peer.mjs" enqueue "$redis_url" "$EVENTS" "$user"
    measure "peer (BullMQ + web-push), $devices device(s) per event" "$devices" $((EVENTS * devices)) peer_worker
  done
fi

# Latency: publish -> push accepted at a steady rate, one worker, a sink that
# decrypts (the event id is a UUIDv7: its first 48 bits are the publish time,
# in ms; the sink stamps each arrival, in ms).
lport=$(free_port)
lat_tls=()
if [ "$TRANSPORT" = https ]; then lat_tls=(--tls --tls-ca-out "$work/ca-latency.pem"); fi
"$BIN" sink "${lat_tls[@]}" --sink-listen "127.0.0.1:$lport" --out "$work/latency.jsonl" 2>"$work/sink-latency.log" &
pids+=($!)
until curl -skf "$TRANSPORT://127.0.0.1:$lport/admin/count" >/dev/null 2>&1; do alive "$!" "herald sink (latency)" "$work/sink-latency.log"; sleep 0.05; done
if [ "$TRANSPORT" = https ]; then
  cat "$work/ca.pem" "$work/ca-latency.pem" >"$work/cas.pem"
  export HERALD_PUSH__EXTRA_CA_FILE="$work/cas.pem"
fi
sink_admin="$TRANSPORT://127.0.0.1:$lport/admin" register lat 1
LAT_RATE=${BENCH_LATENCY_RATE:-1000}
LAT_EVENTS=$((LAT_RATE * ${BENCH_LATENCY_SECONDS:-20}))
herald_workers 1
lat_worker=${started[0]}
sleep 1
"$BIN" publish --redis-url "$redis_url" --user lat --topic bench.latency --title latency --count "$LAT_EVENTS" --rate "$LAT_RATE" --batch 1 >/dev/null 2>&1
until [ "$(curl -sk "$TRANSPORT://127.0.0.1:$lport/admin/count" | jq .delivered)" -ge "$LAT_EVENTS" ]; do alive "$lat_worker" "herald worker" "$work/worker-1.log"; sleep 0.05; done
lat_rss_now=$(awk '/^VmRSS:/ {print $2}' "/proc/$lat_worker/status")
lat_rss_peak=$(peak_kb "$lat_worker")
kill "$lat_worker"; wait "$lat_worker" 2>/dev/null || true
latency_line=$(python3 - "$work/latency.jsonl" "$LAT_RATE" "$LAT_EVENTS" "$lat_rss_now" "$lat_rss_peak" <<'PY'
import json, sys
from datetime import datetime
path, rate, n, rss, peak = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
waits = []
for line in open(path):
    a = json.loads(line)
    if a.get("status") != 201 or not a.get("event_id"):
        continue
    sent_ms = int(a["event_id"].replace("-", "")[:12], 16)
    at = datetime.fromisoformat(a["at"].replace("Z", "+00:00"))
    waits.append(at.timestamp() * 1000 - sent_ms)
waits.sort()
q = lambda p: waits[min(len(waits) - 1, int(p * len(waits)))]
print(f"latency at {rate} events/s ({len(waits)} of {n} events, one worker, ms resolution): "
      f"p50 {q(0.5):.0f} ms, p99 {q(0.99):.0f} ms, p999 {q(0.999):.0f} ms, max {waits[-1]:.0f} ms; "
      f"worker RSS {rss / 1024:.0f} MB at the end, {peak / 1024:.0f} MB peak")
PY
)
echo "$latency_line" >&2

# Ingest through the API (no worker running), beside the XADD ceiling of the same Redis.
ingest_line=$(cd "$repo" && INGEST_API="http://127.0.0.1:$aport" INGEST_REDIS="$redis_url" cargo bench --quiet --bench ingest 2>/dev/null | grep '^ingest:')
echo "$ingest_line" >&2

fanout_line=""
if [ "${BENCH_FANOUT:-1}" = 1 ]; then
  fanout_line=$(cd "$repo" && cargo bench --quiet --bench fanout 2>/dev/null | grep '^one event to')
  echo "$fanout_line" >&2
fi

python3 - "$results" "$ceiling" "$TRANSPORT" "$EVENTS" "$(nproc)" "$latency_line" "$fanout_line" "$ingest_line" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ceiling, transport, events, cores = float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
print()
print(f"{events} events queued per run, {transport}, {cores} cores; crypto ceiling {ceiling:,.0f} messages/s")
print()
print("| run | deliveries/s | of the crypto ceiling | CPU per push | Redis CPU per event | Redis commands per event | peak RSS of a drainer |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    print(f"| {r['name']} | {r['rate']:,.0f} | {r['rate'] / ceiling:.0%} | {r['cpu_us_per_push']:,.0f} µs "
          f"| {r['redis_cpu_us_per_event']:,.0f} µs | {r['commands_per_event']:.1f} | {r['peak_rss_mb']:.0f} MB |")
peer = {r["devices"]: r for r in rows if r["name"].startswith("peer")}
if peer:
    print()
    print("herald (1 worker process) against the peer, same events, same sink, same Redis:")
    for r in rows:
        p = peer.get(r["devices"])
        if r["name"].startswith("herald, 1 ") and p:
            print(f"- {r['devices']} device(s) per event: {r['rate'] / p['rate']:.1f}x the deliveries/s, "
                  f"{r['cpu_us_per_push'] / p['cpu_us_per_push']:.2f} of the CPU per push")
print()
print(sys.argv[6])
if sys.argv[7]:
    print(sys.argv[7])
print(sys.argv[8])
print()
print("Redis commands per event, by command:")
for r in rows:
    print(f"- {r['name']}: {r['commands']}")
PY
