// Browser numbers for BENCHMARKS.md: bundle size, time to first prediction after page load,
// and per-image latency for both models and the two WebAssembly builds (the relaxed-SIMD
// build on one thread and on one thread per core; SIMD128 on one thread), in Debian's headless
// Chromium, the page cross-origin isolated (so that threads can run).
// Run after `cargo xtask web`: `node web/bench.mjs [--n 20]`. Also runs onnxruntime-web
// (npm, wasm backend, installed here on first use without touching package.json) on the same
// models in the same browser at the same thread counts, and prints the ratios.

const ORT_VERSION = '1.30.0';

import { readFileSync, statSync, existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { join } from 'node:path';
import { availableParallelism } from 'node:os';
import { serve, browser, openPage, ROOT, WEB } from './tests/harness.mjs';

const n = Number(process.argv[process.argv.indexOf('--n') + 1]) || 20;
/** Warm-up before each timed series (ours and onnxruntime-web's alike). */
const WARM_MS = 3000;
const FILES = { 'relaxed-simd (threads)': 'pkg/threads/medinfer_wasm_bg.wasm', simd128: 'pkg/medinfer_wasm_bg.wasm' };
// The page's navigator.hardwareConcurrency is this machine's logical cores: what `threads:
// 'auto'` starts (up to 16), and what onnxruntime-web is given for the threaded comparison.
const THREADS = Math.min(availableParallelism(), 16);
const BUILDS = {
  'relaxed-simd ×1': { simd: 'relaxed-simd', threads: 1 },
  simd128: { simd: 'simd128', threads: 1 },
  [`relaxed-simd ×${THREADS}`]: { threads: THREADS },
};
for (const [build, file] of Object.entries(FILES)) {
  const bytes = readFileSync(join(WEB, file));
  const gz = gzipSync(bytes, { level: 9 }).length;
  console.log(`bundle (${build}): ${(bytes.length / 1e6).toFixed(1)} MB raw, ${(gz / 1e6).toFixed(1)} MB gzip -9`);
}

if (!existsSync(join(WEB, 'node_modules/onnxruntime-web/package.json'))) {
  execFileSync('npm', ['install', '--no-save', '--no-audit', '--no-fund', `onnxruntime-web@${ORT_VERSION}`], { cwd: WEB, stdio: 'inherit' });
}

const server = await serve({ isolated: true });
const chromium = await browser();
try {
  // Time to first prediction: navigation start -> first result on screen, the file dropped as
  // soon as the page says it is ready (worker, wasm compile, MobileNetV2 fetch + optimise).
  const ttfp = [];
  for (let i = 0; i < 3; i++) {
    const page = await chromium.context.newPage();
    await page.goto(server.url);
    await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { polling: 'raf', timeout: 120_000 });
    await page.setInputFiles('#file-input', join(ROOT, 'testdata/dicom/CT_small.dcm'));
    await page.waitForFunction(() => performance.getEntriesByName('first-prediction').length, null, { polling: 'raf' });
    ttfp.push(await page.evaluate(() => ({
      first: performance.getEntriesByName('first-prediction')[0].startTime,
    })));
    await page.close();
  }
  console.log(`time to first prediction (MobileNetV2, CT_small, from navigation, the build auto picks on an isolated page: relaxed-simd ×${THREADS}): ${ttfp.map((t) => t.first.toFixed(0)).join(', ')} ms`);

  const { page } = await openPage(chromium.context, server.url);
  const files = ['CT_small.dcm', 'RG1_J2KI.dcm'].map((f) => ({ f, b64: readFileSync(join(ROOT, 'testdata/dicom', f)).toString('base64') }));
  const out = await page.evaluate(async ({ files, n, builds, warmMs }) => {
    // At least warmMs of runs (and 3) before timing: V8 runs a fresh module's code in Liftoff
    // first and tiers hot functions up to TurboFan in the background; 2 warm-up runs of a
    // new worker's 20 MB module left some timings in Liftoff (bimodal, up to 1.6x apart).
    const warm = async (run) => {
      const t0 = performance.now();
      for (let k = 0; k < 3 || performance.now() - t0 < warmMs; k++) await run();
    };
    const { Medinfer } = await import('./medinfer.js');
    const rows = [];
    for (const [build, options] of Object.entries(builds)) {
      const m = await Medinfer.create({ backend: 'cpu', ...options });
      for (const model of ['mobilenetv2-chexnet', 'densenet121-chexnet']) {
        const t0 = performance.now();
        const info = await m.loadModel(model);
        const fetchAndLoad = performance.now() - t0;
        for (const { f, b64 } of files) {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          await warm(() => m.infer(bytes, { modelId: model }));
          const wall = [], engine = [], infer = [];
          for (let i = 0; i < n; i++) {
            const t = performance.now();
            const r = await m.infer(bytes, { modelId: model });
            wall.push(performance.now() - t);
            engine.push(r.timing_ms.total_ms);
            infer.push(r.timing_ms.infer_ms);
          }
          const q = (a, p) => [...a].sort((x, y) => x - y)[Math.min(a.length - 1, Math.floor(p * a.length))];
          rows.push({ build, threads: m.info.threads, model, file: f, load_ms: info.load_ms, fetch_load_ms: fetchAndLoad,
            wall_p50: q(wall, 0.5), wall_p90: q(wall, 0.9), engine_p50: q(engine, 0.5), infer_p50: q(infer, 0.5) });
        }
      }
      m.terminate();
    }
    return rows;
  }, { files, n, builds: BUILDS, warmMs: WARM_MS });
  console.log(`per image, ${n} runs after ${WARM_MS / 1000} s of warm-up runs (client round trip through the worker; engine = decode+preprocess+infer):`);
  console.log('| build | model | file | load (optimise) ms | fetch+load ms | round trip p50 | p90 | engine total p50 | infer p50 |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const r of out) {
    console.log(`| ${r.build} | ${r.model} | ${r.file} | ${r.load_ms.toFixed(0)} | ${r.fetch_load_ms.toFixed(0)} | ${r.wall_p50.toFixed(1)} | ${r.wall_p90.toFixed(1)} | ${r.engine_p50.toFixed(1)} | ${r.infer_p50.toFixed(1)} |`);
  }

  // onnxruntime-web, wasm backend (SIMD), on the same models at 1 thread and at THREADS (its
  // own Worker pool, as the page is isolated): the model run alone.
  const ortRun = async ({ n, threads, warmMs }) => {
    const warm = async (run) => { // as above, for both engines alike
      const t0 = performance.now();
      for (let k = 0; k < 3 || performance.now() - t0 < warmMs; k++) await run();
    };
    const ort = await import('./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs');
    ort.env.wasm.wasmPaths = new URL('./node_modules/onnxruntime-web/dist/', location.href).href;
    const out = [];
    // onnxruntime-web reads numThreads once, when its module starts: one count per page.
    ort.env.wasm.numThreads = threads;
    for (const model of ['mobilenetv2-chexnet', 'densenet121-chexnet']) {
      const bytes = new Uint8Array(await (await fetch(`models/${model}/model.onnx`)).arrayBuffer());
      const t0 = performance.now();
      const session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
      const load = performance.now() - t0;
      const data = new Float32Array(3 * 224 * 224).map((_, i) => Math.sin(i) * 0.5);
      const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', data, [1, 3, 224, 224]) };
      await warm(() => session.run(feeds));
      // Two series of n runs, as ours has one per file: the better series' p50 (and its p90).
      const series = [];
      for (let s = 0; s < 2; s++) {
        const times = [];
        for (let i = 0; i < n; i++) {
          const t = performance.now();
          await session.run(feeds);
          times.push(performance.now() - t);
        }
        times.sort((a, b) => a - b);
        series.push({ p50: times[Math.floor(n / 2)], p90: times[Math.min(n - 1, Math.floor(n * 0.9))] });
      }
      series.sort((a, b) => a.p50 - b.p50);
      out.push({ model, threads, load, ...series[0] });
      await session.release();
    }
    return out;
  };
  // A fresh page per thread count: onnxruntime-web's module is initialised once per page. The
  // page's own engine loads its default model at start: wait for that, so that it is idle
  // while onnxruntime-web runs.
  const ortRows = [];
  for (const threads of [...new Set([1, THREADS])]) {
    const { page: p } = await openPage(chromium.context, server.url);
    ortRows.push(...await p.evaluate(ortRun, { n, threads, warmMs: WARM_MS }));
    await p.close();
  }
  // This VM has slow phases of about half a second, everything in them a third to a half
  // slower, which can take in a whole series of 20 runs: each engine's model run is the
  // better p50 of two series (ours: the two files' series above; the model run does not
  // depend on the file), the same rule for both.
  console.log(`\nmodel run alone vs onnxruntime-web ${ORT_VERSION} (wasm backend, SIMD) at the same thread count, same browser; each side's better p50 of two series of ${n} runs:`);
  console.log('| build | threads | model | medinfer infer p50 ms | onnxruntime-web p50 ms | p90 | ratio (medinfer / ort) | ort session create ms | medinfer load ms |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const first of out.filter((o) => o.file === 'CT_small.dcm')) {
    const both = out.filter((o) => o.build === first.build && o.model === first.model);
    const ours = both.reduce((a, b) => (b.infer_p50 < a.infer_p50 ? b : a));
    const r = ortRows.find((x) => x.model === ours.model && x.threads === ours.threads);
    console.log(`| ${ours.build} | ${ours.threads} | ${r.model} | ${ours.infer_p50.toFixed(1)} | ${r.p50.toFixed(1)} | ${r.p90.toFixed(1)} | ${(ours.infer_p50 / r.p50).toFixed(2)}× | ${r.load.toFixed(0)} | ${ours.load_ms.toFixed(0)} |`);
  }
} finally {
  await chromium.close();
  await server.close();
}
