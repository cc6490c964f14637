// The peer herald is measured against: a BullMQ 5 queue drained by one worker
// process that sends with Node's `web-push` 3.6 (a VAPID JWT signed per
// message, as web-push does), the usual Node stack for this job. Installed
// from npm by scripts/bench.sh into a scratch directory.
//
//   node peer.mjs enqueue REDIS_URL COUNT USER       queue COUNT jobs for USER
//   node peer.mjs work REDIS_URL SUBSCRIPTIONS.json  drain the queue (concurrency 50)
//
// SUBSCRIPTIONS.json: {"<user>": [<browser PushSubscription JSON>, ...]}, the
// same devices herald pushes to. Runs until stopped, like a deployed worker.
import { readFileSync } from 'node:fs';
import { Queue, Worker } from 'bullmq';
import webpush from 'web-push';

const [mode, redisUrl, ...rest] = process.argv.slice(2);
const url = new URL(redisUrl);
const connection = { host: url.hostname, port: Number(url.port), maxRetriesPerRequest: null };
const QUEUE = 'herald-peer';

if (mode === 'enqueue') {
  const [count, user] = rest;
  const queue = new Queue(QUEUE, { connection });
  for (let done = 0; done < Number(count); done += 1000) {
    const n = Math.min(1000, Number(count) - done);
    const jobs = Array.from({ length: n }, (_, i) => ({
      name: 'notify',
      data: { id: `peer-${done + i}`, user, topic: 'bench.run', title: 'bench' },
      opts: { removeOnComplete: true, attempts: 5, backoff: { type: 'exponential', delay: 1000 } },
    }));
    await queue.addBulk(jobs);
  }
  await queue.close();
} else if (mode === 'work') {
  const subscriptions = JSON.parse(readFileSync(rest[0], 'utf8'));
  const vapid = webpush.generateVAPIDKeys();
  const options = {
    TTL: 3600,
    urgency: 'normal',
    vapidDetails: { subject: 'mailto:bench@herald.invalid', publicKey: vapid.publicKey, privateKey: vapid.privateKey },
  };
  const worker = new Worker(
    QUEUE,
    async (job) => {
      const { id, user, topic, title } = job.data;
      const payload = JSON.stringify({ id, topic, title, body: null, url: null, icon: null, tag: null });
      for (const subscription of subscriptions[user] ?? []) {
        await webpush.sendNotification(subscription, payload, options);
      }
    },
    { connection, concurrency: 50 },
  );
  worker.on('failed', (job, err) => console.error(`job ${job?.id} failed: ${err.message}`));
  // Runs until stopped (SIGTERM), like a deployed worker.
  process.on('SIGTERM', async () => {
    await worker.close();
    process.exit(0);
  });
} else {
  console.error('usage: node peer.mjs enqueue REDIS_URL COUNT USER | work REDIS_URL SUBSCRIPTIONS.json');
  process.exit(2);
}
