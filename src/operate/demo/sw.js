// herald's demo service worker, and a start for your app's: shows each push as
// a notification and opens the right URL on a click. It reads both payloads
// herald sends (README, "What a device receives"):
// - herald's payload: {"id", "topic", "title", "body", "url", "actions", ...};
//   a data push has "data" and no "title";
// - a Declarative Web Push message ({"web_push": 8030, "notification": {...}}),
//   which browsers without Declarative Web Push hand to this worker as data.
"use strict";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

// The title and NotificationOptions of herald's payload.
function fromHerald(message) {
  if (message.title === undefined) {
    // A data push: the app decides what to show, but something must show
    // (userVisibleOnly). Here: data.title, or a default.
    const data = message.data || {};
    return { title: typeof data.title === "string" ? data.title : "Updated", options: { data: { herald: message } } };
  }
  const actions = (message.actions || []).map((a) => ({ action: a.action, title: a.title, icon: a.icon }));
  const urls = {};
  for (const a of message.actions || []) urls[a.action] = a.url || message.url;
  return {
    title: message.title,
    options: {
      body: message.body, icon: message.icon, image: message.image, badge: message.badge,
      tag: message.tag, renotify: message.renotify, requireInteraction: message.require_interaction,
      silent: message.silent, timestamp: message.timestamp, lang: message.lang, dir: message.dir,
      vibrate: message.vibrate, actions,
      data: { url: message.url, urls, id: message.id, app: message.data },
    },
    badge: message.app_badge,
  };
}

// The title and NotificationOptions of a declarative message.
function fromDeclarative(message) {
  const n = message.notification || {};
  const actions = (n.actions || []).map((a) => ({ action: a.action, title: a.title, icon: a.icon }));
  const urls = {};
  for (const a of n.actions || []) urls[a.action] = a.navigate;
  return {
    title: n.title,
    options: {
      body: n.body, icon: n.icon, image: n.image, badge: n.badge, tag: n.tag, renotify: n.renotify,
      requireInteraction: n.require_interaction, silent: n.silent, timestamp: n.timestamp,
      lang: n.lang, dir: n.dir, vibrate: n.vibrate, actions,
      data: { url: n.navigate, urls, app: n.data },
    },
    badge: message.app_badge,
  };
}

// Leaves out what the event did not set (undefined options confuse some browsers).
function defined(options) {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
}

self.addEventListener("push", (event) => {
  let message = {};
  try {
    message = event.data ? event.data.json() : {};
  } catch (_) {
    message = { title: event.data ? event.data.text() : "" };
  }
  const shown = message.web_push === 8030 ? fromDeclarative(message) : fromHerald(message);
  // userVisibleOnly: every push must show a notification.
  const work = [self.registration.showNotification(shown.title || "herald", defined(shown.options))];
  if (typeof shown.badge === "number" && self.navigator.setAppBadge) {
    // Badges need an installed app; elsewhere the call fails, and that is fine.
    const badge = shown.badge > 0 ? self.navigator.setAppBadge(shown.badge) : self.navigator.clearAppBadge();
    work.push(badge.catch(() => {}));
  }
  event.waitUntil(Promise.all(work));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const data = event.notification.data || {};
  const url = (event.action && data.urls && data.urls[event.action]) || data.url;
  if (url) event.waitUntil(self.clients.openWindow(url));
});
