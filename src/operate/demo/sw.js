// herald's demo service worker: shows each push as a notification; a click
// opens the event's url. It reads herald's payload ({"title", "body", "url",
// "icon", "tag", ...}, README "Delivery").
"use strict";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let message = {};
  try {
    message = event.data ? event.data.json() : {};
  } catch (_) {
    message = { title: event.data ? event.data.text() : "" };
  }
  const title = message.title || "herald";
  const options = { body: message.body, icon: message.icon, tag: message.tag, data: { url: message.url, id: message.id } };
  // userVisibleOnly: every push must show a notification.
  event.waitUntil(self.registration.showNotification(title, options));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = event.notification.data && event.notification.data.url;
  if (url) event.waitUntil(self.clients.openWindow(url));
});
