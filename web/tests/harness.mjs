// Test harness: a static server that logs every request it receives (method, URL, headers
// and body), Debian's Chromium driven by playwright-core with a fresh profile, and the native
// CLI's predictions to compare the browser's with.

import { createServer } from 'node:http';
import { execFileSync } from 'node:child_process';
import { readFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, extname, normalize, dirname, basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

export const WEB = join(dirname(fileURLToPath(import.meta.url)), '..');
export const ROOT = join(WEB, '..');
const MEDINFER = process.env.MEDINFER_BIN ?? join(ROOT, 'target/release/medinfer');

/** The native CLI's predictions for `paths` with `model`: file name -> {label: score}. */
export function nativePredictions(model, paths) {
  const out = execFileSync(MEDINFER, ['infer', '--json', '--model', model, ...paths], {
    env: { ...process.env, MEDINFER_MODELS: join(ROOT, 'models') },
    maxBuffer: 1 << 24,
  });
  return Object.fromEntries(JSON.parse(out).map((r) => [basename(r.file), Object.fromEntries(r.predictions.map((p) => [p.label, p.score]))]));
}

/**
 * Asserts that the batch `items` for `files` (in order) match `want` (nativePredictions) within
 * `tolerance` on every label; returns the largest difference seen. `what` names the run.
 */
export function assertItemsMatch(items, files, want, what, tolerance = 1e-4) {
  let worst = 0;
  files.forEach((f, i) => {
    assert.ok(!items[i].error, `${what}: ${basename(f)} failed: ${JSON.stringify(items[i].error)}`);
    for (const [label, score] of Object.entries(want[basename(f)])) {
      const diff = Math.abs(items[i].predictions[label] - score);
      worst = Math.max(worst, diff);
      assert.ok(diff <= tolerance, `${what}: ${basename(f)} ${label}: ${items[i].predictions[label]} vs native ${score}`);
    }
  });
  return worst;
}

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.json': 'application/json', '.wasm': 'application/wasm',
  '.onnx': 'application/octet-stream', '.toml': 'text/plain; charset=utf-8', '.dcm': 'application/dicom',
};

/**
 * Serves `web/` on 127.0.0.1; `log` gets {method, url, headers, body, cut} for every request.
 * `isolated`: with COOP/COEP headers, so that the page is cross-origin isolated.
 * `cut(true)` cuts the network the way a pulled cable looks to the browser: every request is
 * still logged (so a test sees what the page tried to send) but its connection is dropped
 * with no response, so the browser's fetch fails. This covers every requester — the page,
 * its workers and the service worker alike — where browser offline emulation does not.
 */
export async function serve({ isolated = false } = {}) {
  const log = [];
  // Cross-origin isolation (SharedArrayBuffer, hence the threaded build): the two headers a
  // deployment sends with the page and the bundle's files.
  const isolation = isolated ? { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' } : {};
  let cut = false;
  const server = createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    log.push({ method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks), cut });
    if (cut) {
      req.socket.destroy();
      return;
    }
    const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
    const file = join(WEB, path.endsWith('/') ? `${path}index.html` : path);
    if (req.method !== 'GET' || !file.startsWith(WEB)) {
      res.writeHead(405).end();
      return;
    }
    try {
      const data = await readFile(file);
      res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-cache', ...isolation });
      res.end(data);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}/`;
  return {
    url,
    log,
    cut(on) {
      cut = on;
      // Kept-alive connections too: a cut network has none.
      if (on) server.closeIdleConnections();
    },
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
  };
}

export const CHROMIUM_ARGS = [
  '--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--disable-quic', '--disable-dev-shm-usage',
];

/**
 * Chromium with a fresh profile (a persistent context in a new temporary folder);
 * `serviceWorkers: 'block'` keeps the page's service worker from registering.
 */
export async function browser({ args = [], serviceWorkers = 'allow' } = {}) {
  const profile = await mkdtemp(join(tmpdir(), 'medinfer-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [...CHROMIUM_ARGS, ...args],
    acceptDownloads: true,
    serviceWorkers,
    viewport: { width: 1280, height: 900 },
  });
  return {
    context,
    async close() {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}

/** Opens the page and waits until the worker, the wasm module and the default model are ready. */
export async function openPage(context, url) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(new Error(m.text())); });
  await page.goto(url);
  await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 120_000 });
  const ready = await page.evaluate(() => document.body.dataset.ready);
  if (ready !== 'true') throw new Error(`the page failed to start: ${await page.textContent('#engine-status')}`);
  return { page, errors };
}
