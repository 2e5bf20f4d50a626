// Offline support: every same-origin GET goes to the network first and falls back to the
// copy kept from the last successful fetch, so the page, the bundle and any model already
// used keep working with the network cut. Nothing else is ever fetched or sent.
const CACHE = 'medinfer-v4';

// The page, the bundle and the default model, so that a reload works offline even after a
// first visit (whose worker started before this service worker took control); other models
// are kept as they are used. The build is the one the worker will pick on this browser
// (wasm-simd.js): the relaxed-SIMD build's files as listed in its files.json (its Workers'
// snippet included), or the SIMD128 build's glue and .wasm.
importScripts('wasm-simd.js');
const BUILD = self.medinferWasm.builds[self.medinferWasm.best];
const SHELL = ['./', 'index.html', 'app.js', 'style.css', 'medinfer.js', 'medinfer-worker.js',
  'wasm-simd.js', BUILD.glue, BUILD.wasm, 'models/index.json'];

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    await cache.addAll(SHELL).catch(() => {});
    if (BUILD.files) {
      try {
        const files = await (await fetch(BUILD.files)).json();
        await cache.addAll(files.map((f) => new URL(f, new URL(BUILD.files, self.location.href)).href));
      } catch {
        // Best effort, as above.
      }
    }
    try {
      const index = await (await fetch('models/index.json')).json();
      const model = index.models.find((m) => m.model_id === index.default);
      if (model) await cache.addAll([`models/${model.manifest}`, `models/${model.onnx}`]);
    } catch {
      // Offline support is best effort; the page works online without it.
    }
    await self.skipWaiting();
  })());
});
self.addEventListener('activate', (event) => event.waitUntil((async () => {
  // An older version's cache holds files this one no longer serves.
  for (const name of await caches.keys()) if (name !== CACHE) await caches.delete(name);
  await self.clients.claim();
})()));

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
