// The bundle's relaxed-SIMD build, threaded. It really is a shared-memory module; a
// cross-origin isolated page loads it, starts its pool of Workers (each fetches the pool's
// helper and instantiates the module on the shared memory) and gives the native CLI's
// predictions; a page that is not isolated runs it on one thread, starts no Worker, and a
// request for threads there is refused with a stable code.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { serve, browser, openPage, nativePredictions, assertItemsMatch, ROOT, WEB } from './harness.mjs';

const MODEL = 'mobilenetv2-chexnet';
const FILES = ['CT_small.dcm', 'RG1_J2KI.dcm', 'US1_J2KI.dcm'].map((f) => join(ROOT, 'testdata/dicom', f));
const TOLERANCE = 1e-4;
const THREADED = 'pkg/threads/';
const HELPER = 'workerHelpers.no-bundler.js';

let isolated;
let plain;
let chromium;
before(async () => {
  [isolated, plain] = await Promise.all([serve({ isolated: true }), serve()]);
  chromium = await browser({ serviceWorkers: 'block' });
});
after(async () => {
  await chromium?.close();
  await Promise.all([isolated?.close(), plain?.close()]);
});

test('the threaded build imports a shared memory and needs relaxed SIMD; the SIMD128 build owns its memory', () => {
  const inspect = (flag) => JSON.parse(execFileSync(process.execPath, [flag, '--input-type=module', '-e', `
    import { readFileSync } from 'node:fs';
    const files = ${JSON.stringify(['pkg/threads/medinfer_wasm_bg.wasm', 'pkg/medinfer_wasm_bg.wasm'].map((f) => join(WEB, f)))};
    console.log(JSON.stringify(files.map((f) => {
      const bytes = readFileSync(f);
      if (!WebAssembly.validate(bytes)) return 'invalid';
      const m = new WebAssembly.Module(bytes);
      return WebAssembly.Module.imports(m).some((i) => i.kind === 'memory') ? 'imports memory' : 'own memory';
    })));
  `]));
  assert.deepEqual(inspect('--experimental-wasm-relaxed-simd'), ['imports memory', 'own memory']);
  assert.deepEqual(inspect('--no-experimental-wasm-relaxed-simd'), ['invalid', 'own memory']);
  // The glue creates that memory shared, with the maximum the build declares.
  const glue = readFileSync(join(WEB, THREADED, 'medinfer_wasm.js'), 'utf8');
  assert.match(glue, /shared:\s*true/);
  assert.match(glue, /initThreads/);
  const listed = JSON.parse(readFileSync(join(WEB, THREADED, 'files.json'), 'utf8'));
  assert.ok(listed.includes('medinfer_wasm.js') && listed.includes('medinfer_wasm_bg.wasm'), listed.join(', '));
  assert.ok(listed.some((f) => f.endsWith(HELPER)), listed.join(', '));
});

/** Runs FILES through the worker API with `options`; returns what it saw, or the error. */
async function runFiles(page, options) {
  const b64 = FILES.map((f) => readFileSync(f).toString('base64'));
  return page.evaluate(async ({ b64, model, options }) => {
    const { Medinfer } = await import('./medinfer.js');
    const bytes = b64.map((s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0)));
    let m;
    try {
      m = await Medinfer.create({ backend: 'cpu', ...options });
    } catch (e) {
      return { error: `${e.name} ${e.code}` };
    }
    await m.loadModel(model);
    const backend = await m.backend();
    const batch = await m.inferBatch(bytes, { modelId: model });
    const one = await m.infer(bytes[0], { modelId: model });
    m.terminate();
    return { info: m.info, backend, items: batch.items, one, isolated: crossOriginIsolated, cores: navigator.hardwareConcurrency };
  }, { b64, model: MODEL, options });
}

function assertParity(items, want, what) {
  return assertItemsMatch(items, FILES, want, what, TOLERANCE);
}

/** One thread: the glue (which imports the pool's helper) is fetched once by each of the
 *  `engines` workers, and no Worker of a pool fetches either again. */
function assertNoPool(paths, engines) {
  assert.equal(paths.filter((p) => p.endsWith(HELPER)).length, engines, `a pool started: ${paths.join(', ')}`);
  assert.equal(paths.filter((p) => p === `/${THREADED}medinfer_wasm.js`).length, engines, paths.join(', '));
}

const fetched = (server, from) => server.log.slice(from).map((r) => new URL(r.url, 'http://x').pathname);

test('an isolated page runs the threaded build on a pool of Workers, with native predictions', async () => {
  const want = nativePredictions(MODEL, FILES);
  const { page, errors } = await openPage(chromium.context, isolated.url);
  try {
    // The page itself: isolated, so auto took the threaded build.
    assert.equal(await page.evaluate(() => crossOriginIsolated), true);
    const cores = await page.evaluate(() => navigator.hardwareConcurrency);
    const autoThreads = Math.min(cores, 16);
    if (autoThreads > 1) {
      assert.equal(await page.getAttribute('#backend', 'data-threads'), String(autoThreads));
    }

    for (const threads of [2, 3]) {
      const from = isolated.log.length;
      const run = await runFiles(page, { threads });
      assert.ok(!run.error, run.error);
      assert.equal(run.info.threads, threads);
      assert.equal(run.info.simd, 'relaxed-simd');
      assert.equal(run.backend.threads, threads);
      const worst = assertParity(run.items, want, `${threads} threads`);
      assert.deepEqual(run.one.predictions, run.items[0].predictions, 'infer and inferBatch agree');
      const paths = fetched(isolated, from);
      // The engine's worker imports the glue, which imports the pool's helper; the helper
      // fetches itself once per Worker it starts (the Worker runs that copy), and each Worker
      // imports the glue, which imports the helper again.
      assert.equal(paths.filter((p) => p.endsWith(HELPER)).length, 1 + 2 * threads, paths.join(', '));
      assert.equal(paths.filter((p) => p === `/${THREADED}medinfer_wasm.js`).length, 1 + threads, paths.join(', '));
      assert.ok(paths.includes(`/${THREADED}medinfer_wasm_bg.wasm`), paths.join(', '));
      assert.ok(!paths.some((p) => /^\/pkg\/medinfer_wasm/.test(p)), `the SIMD128 build was fetched: ${paths.join(', ')}`);
      console.log(`${threads} threads: max |Δ| vs native ${worst.toExponential(2)} over ${FILES.length} files`);
    }

    // One thread on the same isolated page: the same build, no pool; or SIMD128.
    const from = isolated.log.length;
    const single = await runFiles(page, { threads: 1 });
    assert.equal(single.info.threads, 1);
    assert.equal(single.info.simd, 'relaxed-simd');
    assertParity(single.items, want, '1 thread');
    const paths = fetched(isolated, from);
    assert.ok(paths.includes(`/${THREADED}medinfer_wasm_bg.wasm`), paths.join(', '));
    assertNoPool(paths, 1);
    const simd128 = await runFiles(page, { simd: 'simd128' });
    assert.equal(simd128.info.threads, 1);
    assert.equal(simd128.info.simd, 'simd128');
    assert.equal((await runFiles(page, { simd: 'simd128', threads: 2 })).error, 'MedinferError input.options');
    for (const threads of [0, 1.5, 65, '2']) {
      assert.equal((await runFiles(page, { threads })).error, 'MedinferError input.options', `threads ${threads}`);
    }
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
  }
});

test('a page that is not isolated runs the relaxed build on one thread, starts no Worker, and refuses threads', async () => {
  const from = plain.log.length;
  const { page, errors } = await openPage(chromium.context, plain.url);
  try {
    assert.equal(await page.evaluate(() => crossOriginIsolated), false);
    assert.equal(await page.getAttribute('#backend', 'data-threads'), '1');
    const auto = await runFiles(page, {});
    assert.equal(auto.info.threads, 1);
    assert.equal(auto.info.simd, 'relaxed-simd');
    assertParity(auto.items, nativePredictions(MODEL, FILES), 'not isolated');
    assert.equal((await runFiles(page, { threads: 2 })).error, 'MedinferError input.options');
    const paths = fetched(plain, from);
    assert.ok(paths.includes(`/${THREADED}medinfer_wasm_bg.wasm`), paths.join(', '));
    // The page's own engine and the one runFiles started (the refused one loads no build).
    assertNoPool(paths, 2);
    assert.ok(!paths.some((p) => /^\/pkg\/medinfer_wasm/.test(p)), `the SIMD128 build was fetched: ${paths.join(', ')}`);
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
  }
});
