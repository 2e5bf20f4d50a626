// WebGPU in the browser: Chromium with --enable-unsafe-webgpu exposes its bundled SwiftShader
// adapter (a CPU implementation: correctness, not speed). With backend 'gpu' the page and the
// worker API run MobileNetV2 on medinfer's wgpu executor, every node on the GPU, and agree
// with the native CLI (CPU) within 1e-3; without WebGPU, 'auto' falls back to the CPU and says
// why.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, basename } from 'node:path';
import { serve, browser, openPage, nativePredictions, ROOT } from './harness.mjs';

const MODEL = 'mobilenetv2-chexnet';
const FILES = ['CT_small.dcm', 'MR_small_RLE.dcm', 'SC_rgb_jpeg_dcmtk.dcm'].map((f) => join(ROOT, 'testdata/dicom', f));
const TOLERANCE = 1e-3;

let server;
before(async () => { server = await serve(); });
after(async () => { await server?.close(); });

test('WebGPU (SwiftShader) runs MobileNetV2 fully on the GPU with parity; the badge says so', async () => {
  const chromium = await browser({ args: ['--enable-unsafe-webgpu'] });
  try {
    const { page, errors } = await openPage(chromium.context, `${server.url}?model=${MODEL}&backend=gpu`);
    assert.equal(await page.getAttribute('#backend', 'data-backend'), 'gpu');
    assert.equal(await page.textContent('#backend'), 'GPU · WebGPU');
    assert.match(await page.getAttribute('#backend', 'title'), /nodes on the GPU/);

    const b64 = FILES.map((f) => readFileSync(f).toString('base64'));
    const out = await page.evaluate(async ({ b64, model }) => {
      const { Medinfer } = await import('./medinfer.js');
      const bytes = b64.map((s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0)));
      const m = await Medinfer.create({ backend: 'gpu' });
      await m.loadModel(model);
      const info = await m.backend();
      const single = await m.infer(bytes[0], { modelId: model });
      const batch = await m.inferBatch([...bytes, new Uint8Array([1, 2, 3])], { modelId: model });
      m.terminate();
      return { info, single, batch };
    }, { b64, model: MODEL });
    assert.equal(out.info.backend, 'gpu');
    const placement = out.info.models.find((p) => p.model_id === MODEL);
    assert.deepEqual(placement.cpu_ops, [], `no op falls back to the CPU: ${placement.fallbacks.join('; ')}`);
    assert.ok(placement.gpu_nodes > 100, `${placement.gpu_nodes} nodes on the GPU`);

    const cli = nativePredictions(MODEL, FILES);
    let worst = 0;
    const compare = (got, name) => {
      for (const [label, score] of Object.entries(cli[name])) {
        const diff = Math.abs(got.predictions[label] - score);
        worst = Math.max(worst, diff);
        assert.ok(diff <= TOLERANCE, `${name} ${label}: WebGPU ${got.predictions[label]} vs CPU ${score}`);
      }
    };
    compare(out.single, 'CT_small.dcm');
    assert.equal(out.batch.total_images, 4);
    assert.equal(out.batch.successful, 3);
    FILES.forEach((f, i) => {
      const item = out.batch.items[i];
      assert.equal(item.index, i);
      assert.equal(item.batch_id, out.batch.batch_id);
      compare(item, basename(f));
    });
    assert.equal(out.batch.items[3].error.code, 'input.unsupported_format');
    console.log(`WebGPU vs native CPU: max |Δ| ${worst.toExponential(2)} over ${FILES.length} files (${placement.gpu_nodes} GPU nodes)`);
    assert.deepEqual(errors, []);
    await page.close();
  } finally {
    await chromium.close();
  }
});

test('without WebGPU, auto falls back to the CPU and the badge says why', async () => {
  const chromium = await browser();
  try {
    const { page } = await openPage(chromium.context, `${server.url}?model=${MODEL}`);
    assert.equal(await page.getAttribute('#backend', 'data-backend'), 'cpu');
    assert.match(await page.textContent('#backend'), /^CPU · WebAssembly (relaxed )?SIMD$/);
    assert.match(await page.getAttribute('#backend', 'title'), /WebGPU not used: (no GPU adapter|this browser exposes no WebGPU)/);
    await page.close();
  } finally {
    await chromium.close();
  }
});
