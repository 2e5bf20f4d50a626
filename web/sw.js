// Offline support: every same-origin GET goes to the network first and falls back to the
// copy kept from the last successful fetch, so the page, the bundle and any model already
// used keep working with the network cut. Nothing else is ever fetched or sent.
const CACHE = 'medinfer-v1';

// The page and the bundle, so that a reload works offline; models are kept as they are used.
const SHELL = ['./', 'index.html', 'app.js', 'style.css', 'medinfer.js', 'medinfer-worker.js',
  'pkg/medinfer_wasm.js', 'pkg/medinfer_wasm_bg.wasm', 'models/index.json'];

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    await cache.addAll(SHELL).catch(() => {});
    await self.skipWaiting();
  })());
});
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('fetch', (event) => {
  const { request } = event;
  if (request.method !== 'GET' || new URL(request.url).origin !== self.location.origin) return;
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    try {
      const response = await fetch(request);
      if (response.ok) await cache.put(request, response.clone());
      return response;
    } catch (e) {
      const cached = await cache.match(request, { ignoreSearch: true });
      if (cached) return cached;
      throw e;
    }
  })());
});
