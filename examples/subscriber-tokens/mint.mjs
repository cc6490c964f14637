// Mints a herald subscriber token (HS256 JWT) in your app's backend, with
// Node's own crypto. Give it to the signed-in user's browser, which sends it as
// `Authorization: Bearer <token>` to POST/GET/DELETE /v1/subscriptions.
//   HERALD_SUBSCRIBER_SECRET=... HERALD_USER=u-42 node mint.mjs
import { createHmac } from "node:crypto";

export function subscriberToken(user, secret, { ttlSeconds = 3600, topics } = {}) {
  const b64 = (text) => Buffer.from(text).toString("base64url");
  const header = b64(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: user, aud: "herald", iat: now, exp: now + ttlSeconds };
  if (topics) claims.topics = topics; // patterns this browser may subscribe to
  const payload = b64(JSON.stringify(claims));
  const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

console.log(subscriberToken(process.env.HERALD_USER, process.env.HERALD_SUBSCRIBER_SECRET, { topics: ["parking.lot-7.*"] }));
