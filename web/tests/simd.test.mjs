// The bundle's two WebAssembly builds, on one thread (threads.test.mjs: the relaxed build's
// pool of Workers). The relaxed-SIMD build really uses relaxed SIMD (an engine without it
// refuses the module) and the SIMD128 build does not; Chromium picks the relaxed one, also on a
// page that is not cross-origin isolated; each gives the native CLI's predictions; a browser
// without relaxed SIMD (as Safari is today) loads the SIMD128 build, fetches no other, and
// says so; and where the relaxed build fails to start, `auto` falls back to SIMD128.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { serve, browser, openPage, nativePredictions, assertItemsMatch, ROOT, WEB } from './harness.mjs';

const MODEL = 'mobilenetv2-chexnet';
const FILES = ['CT_small.dcm', 'RG1_J2KI.dcm', 'US1_J2KI.dcm'].map((f) => join(ROOT, 'testdata/dicom', f));
const TOLERANCE = 1e-4;
const BUILDS = { 'relaxed-simd': 'pkg/threads/medinfer_wasm_bg.wasm', simd128: 'pkg/medinfer_wasm_bg.wasm' };
const NO_RELAXED = '--no-experimental-wasm-relaxed-simd';

let server;
before(async () => { server = await serve(); });
after(async () => { await server?.close(); });

test('the relaxed-SIMD build needs relaxed SIMD; the SIMD128 build does not', () => {
  // V8 in node, with relaxed SIMD switched on and off: only the relaxed build depends on it.
  const validate = (flag) => JSON.parse(execFileSync(process.execPath, [flag, '--input-type=module', '-e', `
    import { readFileSync } from 'node:fs';
    const files = ${JSON.stringify(Object.values(BUILDS).map((f) => join(WEB, f)))};
    console.log(JSON.stringify(files.map((f) => WebAssembly.validate(readFileSync(f)))));
  `]));
  assert.deepEqual(validate('--experimental-wasm-relaxed-simd'), [true, true]);
  assert.deepEqual(validate(NO_RELAXED), [false, true]);
});

/** Runs FILES through the worker API with `simd` ('auto' or a build); returns what it saw. */
async function runFiles(page, simd) {
  const b64 = FILES.map((f) => readFileSync(f).toString('base64'));
  return page.evaluate(async ({ b64, model, simd }) => {
    const { Medinfer } = await import('./medinfer.js');
    const bytes = b64.map((s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0)));
    const m = await Medinfer.create({ backend: 'cpu', simd });
    const loaded = await m.loadModel(model);
    const backend = await m.backend();
    const batch = await m.inferBatch(bytes, { modelId: model });
    m.terminate();
    return { info: m.info, backend, items: batch.items, kernels: loaded.matmul_kernels, operators: loaded.operators };
  }, { b64, model: MODEL, simd });
}

function assertParity(items, want, what) {
  return assertItemsMatch(items, FILES, want, what, TOLERANCE);
}

test('Chromium runs the relaxed-SIMD build on a page that is not isolated; both builds agree with the native CLI', async () => {
  const chromium = await browser();
  try {
    const { page, errors } = await openPage(chromium.context, `${server.url}?model=${MODEL}`);
    assert.equal(await page.evaluate(() => crossOriginIsolated), false);
    assert.equal(await page.getAttribute('#backend', 'data-simd'), 'relaxed-simd');
    assert.equal(await page.textContent('#backend'), 'CPU · WebAssembly relaxed SIMD');
    const want = nativePredictions(MODEL, FILES);
    const picked = await runFiles(page, 'auto');
    assert.equal(picked.info.simd, 'relaxed-simd');
    assert.equal(picked.info.threads, 1);
    assert.equal(picked.backend.simd, 'relaxed-simd');
    // Both builds run medinfer's 16×8 matrix kernel (core/src/wasm_mmm.rs), not tract's 8×8,
    assert.ok(picked.kernels.includes('medinfer_wasm_f32_16x8'), picked.kernels.join());
    // and medinfer's direct convolution (core/src/conv.rs) for MobileNetV2's one dense 3×3
    // convolution, its stem, in place of tract's padding and lazy im2col.
    assert.equal(picked.operators['medinfer.Conv'], 1, JSON.stringify(picked.operators));
    const relaxed = assertParity(picked.items, want, 'relaxed-simd');
    const forced = await runFiles(page, 'simd128');
    assert.equal(forced.info.simd, 'simd128');
    assert.equal(forced.backend.simd, 'simd128');
    assert.ok(forced.kernels.includes('medinfer_wasm_f32_16x8'), forced.kernels.join());
    assert.equal(forced.operators['medinfer.Conv'], 1, JSON.stringify(forced.operators));
    const simd128 = assertParity(forced.items, want, 'simd128');
    // DenseNet-121: its 58 3×3 convolutions, its stem and the 1×1 convolutions of its three
    // transitions, whose 2×2 average pooling runs before the product (a quarter of the work);
    // its other 1×1 ones stay tract's products in the browser. (Its numbers: page.test.mjs.)
    const dense = await page.evaluate(async () => {
      const { Medinfer } = await import('./medinfer.js');
      const m = await Medinfer.create({ backend: 'cpu', simd: 'simd128' });
      const loaded = await m.loadModel('densenet121-chexnet');
      m.terminate();
      return loaded.operators;
    });
    assert.equal(dense['medinfer.Conv'], 62, JSON.stringify(dense));
    assert.equal(dense.SumPool ?? dense.OptSumPool ?? 0, 0, JSON.stringify(dense));
    console.log(`vs native: relaxed-simd max |Δ| ${relaxed.toExponential(2)}, simd128 ${simd128.toExponential(2)} over ${FILES.length} files`);
    const bogus = await page.evaluate(async () => {
      const { Medinfer } = await import('./medinfer.js');
      return Medinfer.create({ simd: 'avx512' }).then(() => 'created', (e) => `${e.name} ${e.code}`);
    });
    assert.equal(bogus, 'MedinferError input.options');
    assert.deepEqual(errors.map(String), []);
    await page.close();
  } finally {
    await chromium.close();
  }
});

test('without relaxed SIMD, the page loads the SIMD128 build only; forcing relaxed is refused', async () => {
  // Chromium 156's V8 has no switch to turn relaxed SIMD off any more, so an engine without it
  // is emulated where the bundle asks: the probe's f32x4.relaxed_madd opcode (0xfd 0x85 0x02)
  // is served as an opcode no engine knows, which is what relaxed_madd is to an engine without
  // the proposal. Everything after that (the choice, the fetches, the badge, the SIMD128
  // build's predictions) is the real thing. The service worker is kept out: Playwright's
  // routing does not reliably reach its importScripts, and its precache would then fetch the
  // relaxed build on its own (the offline test covers the service worker).
  const chromium = await browser({ serviceWorkers: 'block' });
  let probes = 0;
  await chromium.context.route('**/wasm-simd.js', async (route) => {
    const response = await route.fetch();
    const text = await response.text();
    const patched = text.replace('0xfd, 0x85, 0x02, 0x0b', '0xfd, 0xff, 0x03, 0x0b');
    assert.notEqual(patched, text, 'the probe is in wasm-simd.js');
    probes++;
    await route.fulfill({ response, body: patched });
  });
  try {
    const seen = server.log.length;
    const { page, errors } = await openPage(chromium.context, `${server.url}?model=${MODEL}`);
    assert.equal(await page.getAttribute('#backend', 'data-simd'), 'simd128');
    assert.equal(await page.textContent('#backend'), 'CPU · WebAssembly SIMD');
    const picked = await runFiles(page, 'auto');
    assert.equal(picked.info.simd, 'simd128');
    const worst = assertParity(picked.items, nativePredictions(MODEL, FILES), 'simd128');
    console.log(`without relaxed SIMD: simd128 max |Δ| ${worst.toExponential(2)}`);
    const forced = await page.evaluate(async () => {
      const { Medinfer } = await import('./medinfer.js');
      return Medinfer.create({ simd: 'relaxed-simd' }).then(() => 'created', (e) => `${e.name} ${e.code}`);
    });
    assert.equal(forced, 'MedinferError input.options');
    const urls = server.log.slice(seen).map((r) => r.url);
    assert.ok(urls.includes(`/${BUILDS.simd128}`), `fetched ${urls.join(', ')}`);
    assert.ok(!urls.some((u) => u.startsWith('/pkg/threads/')), `fetched ${urls.join(', ')}`);
    assert.ok(probes >= 1, 'the worker read the emulated probe');
    assert.deepEqual(errors.map(String), []);
    await page.close();
  } finally {
    await chromium.close();
  }
});

test('where the relaxed-SIMD build fails to start, auto runs SIMD128 and a forced relaxed build fails', async () => {
  // The relaxed build's shared memory reserves its 2 GiB maximum, which a device short of
  // address space may refuse; a failed fetch of its .wasm stands in for that here.
  const chromium = await browser({ serviceWorkers: 'block' });
  await chromium.context.route(`**/${BUILDS['relaxed-simd']}`, (route) => route.abort());
  try {
    const { page, errors } = await openPage(chromium.context, `${server.url}?model=${MODEL}`);
    assert.equal(await page.getAttribute('#backend', 'data-simd'), 'simd128');
    const picked = await runFiles(page, 'auto');
    assert.equal(picked.info.simd, 'simd128');
    assertParity(picked.items, nativePredictions(MODEL, FILES), 'simd128 fallback');
    const forced = await page.evaluate(async () => {
      const { Medinfer } = await import('./medinfer.js');
      return Medinfer.create({ simd: 'relaxed-simd' }).then(() => 'created', (e) => e.name);
    });
    assert.notEqual(forced, 'created');
    // Chromium logs each aborted fetch as a console error; nothing else may fail.
    assert.deepEqual(errors.map(String).filter((e) => !/Failed to load resource|ERR_FAILED/.test(e)), []);
    await page.close();
  } finally {
    await chromium.close();
  }
});
