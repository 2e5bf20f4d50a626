// The page in Debian's headless Chromium: real DICOM files and a PNG dropped in, predictions
// against the native CLI, preview, de-identification report, bad files, export, proof that
// nothing is uploaded, and a second run with the network cut.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serve, browser, openPage, nativePredictions, ROOT, WEB } from './harness.mjs';

const DICOM = join(ROOT, 'testdata/dicom');
const GOOD_DICOM = ['CT_small.dcm', 'JPEG2000.dcm', 'MR_small_RLE.dcm', 'RG1_J2KI.dcm', 'SC_rgb_jpeg_dcmtk.dcm', 'US1_J2KI.dcm'];
const TOLERANCE = 1e-4;
const OUT = join(WEB, 'test-output');
mkdirSync(OUT, { recursive: true });

let server;
let chromium;
const tmp = mkdtempSync(join(tmpdir(), 'medinfer-web-'));
const files = {};

before(async () => {
  // A real PNG (CT_small's pixels through pydicom, an independent reader), a PNG 10 000 px
  // wide, and a text file named like a DICOM file.
  execFileSync('python3', ['-c', `
import sys, numpy as np, pydicom
from PIL import Image
px = pydicom.dcmread(sys.argv[1]).pixel_array.astype(np.float64)
px = (px - px.min()) / (px.max() - px.min()) * 255
Image.fromarray(px.round().astype(np.uint8)).resize((256, 256)).save(sys.argv[2])
Image.new('L', (10000, 64), 128).save(sys.argv[3])
`, join(DICOM, 'CT_small.dcm'), join(tmp, 'ct_small.png'), join(tmp, 'wide_10000px.png')]);
  writeFileSync(join(tmp, 'notes.dcm'), 'Referral notes for the patient: see attached.\n');
  for (const f of GOOD_DICOM) files[f] = join(DICOM, f);
  files['ct_small.png'] = join(tmp, 'ct_small.png');
  files['MR_truncated.dcm'] = join(DICOM, 'MR_truncated.dcm');
  files['notes.dcm'] = join(tmp, 'notes.dcm');
  files['wide_10000px.png'] = join(tmp, 'wide_10000px.png');
  server = await serve();
  chromium = await browser();
});

after(async () => {
  await chromium?.close();
  await server?.close();
  rmSync(tmp, { recursive: true, force: true });
});

/** The native CLI's predictions: file name -> {label: score}. */
function reference(model, names) {
  return nativePredictions(model, names.map((n) => files[n]));
}

/** Every PHI value pydicom reads from the DICOM files used (testdata/dicom/manifest.json). */
function phiStrings() {
  const manifest = JSON.parse(readFileSync(join(DICOM, 'manifest.json'), 'utf8'));
  return manifest
    .filter((m) => files[m.file])
    .flatMap((m) => Object.values(m.phi ?? {}))
    .map((v) => String(v).trim())
    .filter((v) => v.length >= 4); // 1–3 character values (sex "O", age) match everywhere
}

/** Drops files on the drop zone the way a user's drag-and-drop does (a DataTransfer). */
async function drop(page, names) {
  const payload = names.map((n) => ({ name: n, b64: readFileSync(files[n]).toString('base64') }));
  const dt = await page.evaluateHandle((list) => {
    const dt = new DataTransfer();
    for (const f of list) dt.items.add(new File([Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0))], f.name));
    return dt;
  }, payload);
  await page.dispatchEvent('#drop', 'drop', { dataTransfer: dt });
}

/** Every request is a body-less GET of one of the page's own files, with no PHI in it. */
function assertBundleGets(requests) {
  const phi = phiStrings();
  for (const r of requests) {
    assert.equal(r.method, 'GET', `${r.method} ${r.url}`);
    assert.equal(r.body.length, 0);
    assert.match(r.url, /^\/(models\/[\w.-]+(\/[\w.-]+)?|pkg\/[\w.-]+(\/[\w.-]+)*|[\w.-]*)$/, `unexpected request ${r.url}`);
    const all = r.url + JSON.stringify(r.headers);
    for (const p of phi) assert.ok(!all.includes(p), `PHI in a request: ${r.url}`);
  }
}

async function settled(page, count) {
  await page.waitForFunction((n) => {
    const trs = [...document.querySelectorAll('#files tbody tr')];
    return trs.length === n && trs.every((tr) => ['done', 'error'].includes(tr.dataset.status)) && document.body.dataset.busy === 'false';
  }, count, { timeout: 300_000 });
}

async function rowStates(page) {
  return page.$$eval('#files tbody tr', (trs) => trs.map((tr) => ({
    name: tr.querySelector('.file').textContent,
    status: tr.dataset.status,
    code: tr.querySelector('.code')?.textContent ?? null,
  })));
}

async function exportJson(page) {
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export-json')]);
  return JSON.parse(readFileSync(await download.path(), 'utf8'));
}

function assertParity(results, ref, model) {
  let worst = 0;
  for (const [name, want] of Object.entries(ref)) {
    const got = results.find((r) => r.file === name);
    assert.ok(got && !got.error, `${name}: no result`);
    assert.equal(got.model_id, model);
    assert.deepEqual(Object.keys(got.predictions).sort(), Object.keys(want).sort());
    const scores = Object.values(got.predictions);
    assert.ok(scores.every((s, i) => i === 0 || scores[i - 1] >= s), `${name}: predictions sorted`);
    for (const [label, score] of Object.entries(want)) {
      const diff = Math.abs(got.predictions[label] - score);
      worst = Math.max(worst, diff);
      assert.ok(diff <= TOLERANCE, `${name} ${label}: browser ${got.predictions[label]} vs native ${score}`);
    }
  }
  return worst;
}

test('the page classifies, previews and de-identifies in the tab; nothing is uploaded', async () => {
  const requests = [];
  chromium.context.on('request', (r) => requests.push(r));
  const { page, errors } = await openPage(chromium.context, server.url);
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  const loadedAt = server.log.length;
  const seenAt = requests.length;

  const names = Object.keys(files);
  await drop(page, names);
  await settled(page, names.length);

  // Bad files: a clear error each; the others finish.
  const states = await rowStates(page);
  const byName = Object.fromEntries(states.map((s) => [s.name, s]));
  assert.match(byName['MR_truncated.dcm'].code, /^decode\.dicom: /);
  assert.match(byName['notes.dcm'].code, /^input\.unsupported_format: /);
  assert.match(byName['wide_10000px.png'].code, /^input\.dimensions: /);
  for (const n of [...GOOD_DICOM, 'ct_small.png']) assert.equal(byName[n].status, 'done', `${n} finished`);

  // Predictions equal the native CLI's.
  const good = [...GOOD_DICOM, 'ct_small.png'];
  const results = await exportJson(page);
  const worst = assertParity(results, reference('mobilenetv2-chexnet', good), 'mobilenetv2-chexnet');
  console.log(`mobilenetv2: ${good.length} files, max |browser - native| = ${worst.toExponential(2)}`);
  for (const r of results.filter((r) => r.file.endsWith('.dcm') && !r.error)) assert.match(r.patient_id, /^PT-[0-9A-F]{24}$/);
  assert.equal(results.find((r) => r.file === 'ct_small.png').patient_id, null);

  // CSV export: a header and one line per file.
  const [csv] = await Promise.all([page.waitForEvent('download'), page.click('#export-csv')]);
  const lines = readFileSync(await csv.path(), 'utf8').trim().split('\n');
  assert.equal(lines.length, names.length + 1);
  assert.match(lines[0], /^file,inference_id,model_id,/);

  // The preview renders (not blank) with window/level.
  await page.click('#files tbody tr:nth-child(1) button'); // CT_small
  await page.waitForFunction(() => document.getElementById('preview').dataset.rendered === 'true');
  const stats = () => page.evaluate(() => {
    const c = document.getElementById('preview');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let sum = 0, sq = 0, n = 0;
    for (let i = 0; i < d.length; i += 4) { sum += d[i]; sq += d[i] * d[i]; n++; }
    const mean = sum / n;
    return { w: c.width, h: c.height, mean, std: Math.sqrt(sq / n - mean * mean) };
  });
  const before = await stats();
  assert.equal(before.w, 128);
  assert.ok(before.std > 10, `preview not blank (std ${before.std})`);
  // The screenshot itself (what the user sees), decoded back in the page: not one flat colour.
  const shot = await page.locator('#preview').screenshot({ path: join(OUT, 'preview.png') });
  const shotStd = await page.evaluate(async (b64) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const c = new OffscreenCanvas(img.width, img.height);
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, img.width, img.height).data;
    let sum = 0, sq = 0;
    for (let i = 0; i < d.length; i += 4) { sum += d[i]; sq += d[i] * d[i]; }
    const n = d.length / 4;
    return Math.sqrt(sq / n - (sum / n) ** 2);
  }, shot.toString('base64'));
  assert.ok(shotStd > 10, `screenshot not blank (std ${shotStd})`);
  await page.fill('#wl-width', '50'); // a narrow window changes the rendering
  await page.waitForFunction((m) => {
    const c = document.getElementById('preview');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let sum = 0; for (let i = 0; i < d.length; i += 4) sum += d[i];
    return Math.abs(sum / (d.length / 4) - m) > 1;
  }, before.mean);

  // The de-identification report is shown; burned-in text in the ultrasound is blacked out.
  await page.click(`#files tbody tr:nth-child(${names.indexOf('US1_J2KI.dcm') + 1}) button`);
  await page.waitForSelector('#deid:not([hidden])');
  const summary = await page.textContent('#deid-summary');
  assert.match(summary, /Patient pseudonymPT-[0-9A-F]{24}/);
  assert.match(summary, /Burned-in text\d+ region\(s\) blacked out/);
  assert.ok(await page.locator('#deid-table tbody tr').count() > 10);
  await page.screenshot({ path: join(OUT, 'page.png'), fullPage: true });
  // The de-identified file, read back by pydicom.
  const [deid] = await Promise.all([page.waitForEvent('download'), page.click('#download-deid')]);
  const read = execFileSync('python3', ['-c', `
import sys, pydicom
d = pydicom.dcmread(sys.argv[1])
print(d.PatientID, d.PatientIdentityRemoved, str(d.PatientName))
`, await deid.path()]).toString().trim().split(' ');
  assert.match(read[0], /^PT-[0-9A-F]{24}$/);
  assert.equal(read[1], 'YES');
  assert.match(deid.suggestedFilename(), /^PT-[0-9A-F]{24}_\d+\.dcm$/);

  // No PHI on the page.
  const text = await page.evaluate(() => document.body.innerText);
  for (const phi of phiStrings()) assert.ok(!text.includes(phi), 'the page shows no PHI');

  // No upload: after load, every request is a GET of the page's own files, with no body and
  // no PHI or image bytes anywhere in it.
  const after = server.log.slice(loadedAt);
  assertBundleGets(after);
  for (const r of requests.slice(seenAt)) {
    assert.ok(r.url().startsWith(server.url) || r.url().startsWith('blob:'), `request leaves the origin: ${r.url()}`);
    assert.equal(r.postData(), null, `a request carries a body: ${r.url()}`);
  }
  assert.deepEqual(sockets, [], 'no WebSocket');
  console.log(`after load: ${after.length} requests, all GETs of bundle files: ${after.map((r) => r.url).join(' ')}`);

  assert.deepEqual(errors.map(String), []);
  await page.close();
});

// Its own browser profile and a network cut at the server (see harness.mjs): Playwright's
// offline emulation does not cover the service worker's fetches, and a failure here must not
// leave a half-offline browser behind for the next tests.
test('with the network cut, the page still classifies, and a reload starts from the service worker', async () => {
  const own = await browser();
  try {
    const { page, errors } = await openPage(own.context, server.url);
    // The service worker is installed, active and in control (its install step keeps the
    // page, the bundle and the default model).
    await page.evaluate(() => navigator.serviceWorker.ready);
    await page.waitForFunction(() => navigator.serviceWorker.controller?.state === 'activated', null, { timeout: 30_000 });
    const names = ['CT_small.dcm', 'MR_small_RLE.dcm', 'ct_small.png', 'notes.dcm'];
    await drop(page, names);
    await settled(page, names.length);
    const online = await exportJson(page);
    assert.equal(online.filter((r) => !r.error).length, 3);

    server.cut(true);
    const cutAt = server.log.length;
    // Clear, drop again: same results, and the page asked the network for nothing.
    await page.click('#clear');
    await drop(page, names);
    await settled(page, names.length);
    const offline = await exportJson(page);
    for (const r of online.filter((r) => !r.error)) {
      const again = offline.find((o) => o.file === r.file);
      assert.deepEqual(again.predictions, r.predictions, `${r.file} offline`);
    }
    assert.deepEqual(server.log.slice(cutAt).map((r) => `${r.method} ${r.url}`), [], 'nothing was requested with the network cut');

    // A reload: every fetch fails at the network, the service worker answers from its cache.
    await page.reload();
    await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 120_000 });
    assert.equal(await page.evaluate(() => document.body.dataset.ready), 'true', 'the page starts with the network cut');
    // ... on the relaxed-SIMD build, whose files (its glue's snippet included) were precached.
    assert.equal(await page.getAttribute('#backend', 'data-simd'), 'relaxed-simd');
    await page.setInputFiles('#file-input', files['CT_small.dcm']);
    await settled(page, 1);
    const reloaded = await exportJson(page);
    assert.deepEqual(reloaded[0].predictions, online.find((r) => r.file === 'CT_small.dcm').predictions);
    // What reached the cut network: the service worker's network-first tries of the page's own
    // files (and Chromium's update check of /sw.js) — body-less GETs, nothing else.
    const tried = server.log.slice(cutAt);
    assertBundleGets(tried);
    console.log(`network cut: ${tried.length} failed GETs during the reload (${[...new Set(tried.map((r) => r.url))].join(' ')})`);
    assert.deepEqual(errors.map(String), []);
  } finally {
    server.cut(false);
    await own.close();
  }
});

test('the model picker runs DenseNet-121 with parity', async () => {
  const { page, errors } = await openPage(chromium.context, server.url);
  const names = ['CT_small.dcm', 'RG1_J2KI.dcm', 'ct_small.png'];
  await page.setInputFiles('#file-input', names.map((n) => files[n]));
  await settled(page, names.length);
  await page.selectOption('#model', 'densenet121-chexnet');
  await page.waitForFunction(() => [...document.querySelectorAll('#files tbody tr .top')].every((td) => td.textContent) &&
    document.body.dataset.busy === 'false' && /Ready/.test(document.getElementById('engine-status').textContent), null, { timeout: 300_000 });
  await settled(page, names.length);
  const results = await exportJson(page);
  const worst = assertParity(results, reference('densenet121-chexnet', names), 'densenet121-chexnet');
  console.log(`densenet121: ${names.length} files, max |browser - native| = ${worst.toExponential(2)}`);
  assert.match(await page.textContent('#disclaimer'), /random, untrained weights/);
  assert.deepEqual(errors.map(String), []);
  await page.close();
});

test('the viewer embedding example overlays the result for an instance ArrayBuffer', async () => {
  const page = await chromium.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  await page.goto(`${server.url}embed/`);
  await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 120_000 });
  const shown = JSON.parse(await page.evaluate(() => document.body.dataset.result));
  assert.equal(shown.imageId, 'wadouri:../samples/CT_small.dcm');
  const ref = reference('mobilenetv2-chexnet', ['CT_small.dcm'])['CT_small.dcm'];
  for (const [label, score] of Object.entries(ref)) assert.ok(Math.abs(shown.predictions[label] - score) <= TOLERANCE, label);
  const overlay = await page.$$eval('#findings li', (lis) => lis.map((li) => li.textContent));
  assert.equal(overlay.length, 3);
  assert.ok(overlay[0].startsWith(Object.keys(shown.predictions)[0]));
  // Switching instance: the overlay follows.
  await page.click('nav button:nth-child(3)');
  await page.waitForFunction(() => JSON.parse(document.body.dataset.result).imageId.endsWith('RG1_J2KI.dcm'), null, { timeout: 60_000 });
  await page.screenshot({ path: join(OUT, 'embed.png') });
  assert.deepEqual(errors.map(String), []);
  await page.close();
});

test('the worker API is promise-based and cancellable', async () => {
  const { page } = await openPage(chromium.context, server.url);
  const ct = readFileSync(files['CT_small.dcm']).toString('base64');
  const out = await page.evaluate(async (b64) => {
    const { Medinfer } = await import('./medinfer.js');
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const m = await Medinfer.create();
    await m.loadModel('mobilenetv2-chexnet');
    // Aborted before it starts: rejects at once.
    const pre = new AbortController();
    pre.abort();
    const early = await m.infer(bytes, {}, { signal: pre.signal }).catch((e) => e.name);
    // A batch of 24, cancelled after the first progress report: stops at a chunk boundary.
    const c = new AbortController();
    let progress = 0;
    const batch = await m.inferBatch(Array(24).fill(bytes), {
      modelId: 'mobilenetv2-chexnet', chunk: 4, signal: c.signal,
      onProgress: () => { progress++; c.abort(); },
    }).then(() => 'finished', (e) => e.name);
    // The worker is still healthy, and errors carry codes.
    await new Promise((r) => setTimeout(r, 500));
    const after = await m.infer(bytes, { modelId: 'mobilenetv2-chexnet' });
    const bad = await m.infer(new Uint8Array([1, 2, 3]), {}).catch((e) => `${e.name} ${e.code}`);
    const input = bytes.buffer;
    await m.infer(input, {});
    m.terminate();
    return { early, batch, progress, top: after.top_label, bad, kept: input.byteLength };
  }, ct);
  assert.equal(out.early, 'AbortError');
  assert.equal(out.batch, 'AbortError');
  assert.ok(out.progress >= 1 && out.progress < 24, `stopped early (${out.progress} of 24 reported)`);
  assert.equal(typeof out.top, 'string');
  assert.equal(out.bad, 'MedinferError input.unsupported_format');
  assert.ok(out.kept > 0, 'the caller keeps its ArrayBuffer');
  await page.close();
});

test('the page has no serious accessibility violations (axe-core), with results shown', async () => {
  const { page } = await openPage(chromium.context, server.url);
  await page.setInputFiles('#file-input', ['CT_small.dcm', 'notes.dcm'].map((n) => files[n]));
  await settled(page, 2);
  await page.click('#files tbody tr:nth-child(1) button');
  await page.waitForSelector('#deid:not([hidden])');
  await page.addScriptTag({ path: join(WEB, 'node_modules/axe-core/axe.min.js') });
  const violations = await page.evaluate(async () => {
    const r = await globalThis.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.filter((v) => ['serious', 'critical'].includes(v.impact))
      .map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).join(', ')})`);
  });
  assert.deepEqual(violations, []);
  // Narrow screens: the layout reflows to one column, nothing wider than the viewport.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `horizontal overflow of ${overflow}px on a phone-sized viewport`);
  await page.screenshot({ path: join(OUT, 'phone.png'), fullPage: true });
  await page.close();
});

test('Cancel stops a running batch in the page; the rest is marked cancelled', async () => {
  const { page } = await openPage(chromium.context, server.url);
  const b64 = readFileSync(files['RG1_J2KI.dcm']).toString('base64');
  const dt = await page.evaluateHandle((data) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    for (let i = 0; i < 24; i++) dt.items.add(new File([bytes], `chest-${i}.dcm`));
    return dt;
  }, b64);
  await page.dispatchEvent('#drop', 'drop', { dataTransfer: dt });
  await page.waitForSelector('#files tbody tr[data-status=de-identifying], #files tbody tr[data-status=done]', { timeout: 120_000 });
  await page.click('#cancel');
  await page.waitForFunction(() => document.getElementById('cancel').disabled, null, { timeout: 120_000 });
  const states = await page.$$eval('#files tbody tr', (trs) => trs.map((tr) => tr.dataset.status));
  const cancelled = states.filter((s) => s === 'cancelled').length;
  assert.ok(cancelled > 0 && cancelled < 24, `cancelled ${cancelled} of 24: ${states.join(' ')}`);
  assert.ok(states.every((s) => ['done', 'cancelled'].includes(s)), states.join(' '));
  await page.close();
});
