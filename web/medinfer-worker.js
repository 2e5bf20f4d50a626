// medinfer's Web Worker: owns the wasm Engine so decoding, de-identification and inference
// never block the page. Spoken to only through medinfer.js (MedinferClient).
//
// Protocol: the page posts {id, op, args}; the worker answers {id, ok: true, value} or
// {id, ok: false, error: {name, code, message}}, and {id, progress} for batches. {cancel: id}
// drops a queued request, or stops a running batch at its next chunk boundary.
//
// The only network requests this worker (and the threaded build's pool Workers) makes are
// GETs of the bundle's own files: its WebAssembly build and its models.

import './wasm-simd.js';

const { builds: BUILDS, hasRelaxedSimd, hasRelaxedBuild, canThread, best: bestSimd, autoThreads } = self.medinferWasm;

let Engine = null; // the class exported by the glue of the build init picked
let engine = null;
let modelsBase = null;
// 'auto' | 'gpu' | 'cpu', from Medinfer.create; the engine settles it after each model load.
let backendMode = 'auto';
let backendInfo = { backend: 'cpu', simd: null, threads: 1, adapter: null, reason: 'no model loaded yet', models: [] };
let modelIndex = null;
let simd = null; // 'relaxed-simd' | 'simd128': the build this worker runs
let threads = 1; // threads on the CPU path's matrix products (above 1: the threaded build)
const loaded = new Map(); // model id -> ModelInfo
const queue = [];
const cancelled = new Set();
let pumping = false;

const ops = {
  async init({ base, deidKey, backend, simd: wanted = 'auto', threads: wantedThreads = 'auto' }) {
    if (backend !== undefined && !['auto', 'gpu', 'cpu'].includes(backend)) {
      throw medinferError('input.options', 'backend is auto, gpu or cpu');
    }
    if (!['auto', 'relaxed-simd', 'simd128'].includes(wanted)) {
      throw medinferError('input.options', 'simd is auto, relaxed-simd or simd128');
    }
    if (wanted === 'relaxed-simd' && !hasRelaxedBuild) {
      throw medinferError('input.options', hasRelaxedSimd
        ? 'the relaxed-SIMD build needs a shared WebAssembly memory, which this page cannot create: serve it cross-origin isolated'
        : 'this browser has no WebAssembly relaxed SIMD');
    }
    if (wantedThreads !== 'auto' && !(Number.isInteger(wantedThreads) && wantedThreads >= 1 && wantedThreads <= 64)) {
      throw medinferError('input.options', 'threads is auto or an integer from 1 to 64');
    }
    // Two builds of the same code: relaxed SIMD with shared memory (threads where the page is
    // cross-origin isolated, one thread elsewhere) wherever the engine can run it; else plain
    // SIMD128, one thread.
    threads = wantedThreads === 'auto' ? (wanted === 'simd128' ? 1 : autoThreads) : wantedThreads;
    if (threads > 1 && wanted === 'simd128') {
      throw medinferError('input.options', 'the threaded build uses relaxed SIMD: simd128 runs on one thread');
    }
    if (threads > 1 && !canThread) {
      throw medinferError('input.options', hasRelaxedSimd
        ? 'threads need a cross-origin isolated page (Cross-Origin-Opener-Policy: same-origin, Cross-Origin-Embedder-Policy: require-corp)'
        : 'threads need WebAssembly relaxed SIMD, which this browser lacks');
    }
    simd = threads > 1 ? 'relaxed-simd' : wanted === 'auto' ? bestSimd : wanted;
    modelsBase = new URL('models/', base);
    let glue;
    try {
      glue = await loadBuild(base);
    } catch (e) {
      // The relaxed-SIMD build's shared memory reserves its whole maximum (2 GiB) up front,
      // which a device short of address space may refuse: what `auto` chose falls back to
      // SIMD128 on one thread; what was asked for fails.
      if (simd === 'simd128' || wanted !== 'auto' || (wantedThreads !== 'auto' && wantedThreads > 1)) throw e;
      console.warn('medinfer: the relaxed-SIMD build failed to start; running SIMD128', e);
      [simd, threads] = ['simd128', 1];
      glue = await loadBuild(base);
    }
    Engine = glue.Engine;
    if (Engine.simd() !== simd || Engine.threads() !== threads) {
      throw medinferError('internal.error', `the build loaded says it is ${Engine.simd()} on ${Engine.threads()} thread(s)`);
    }
    engine = new Engine(deidKey ? { deidKey } : undefined);
    backendMode = backend ?? 'auto';
    backendInfo = { ...backendInfo, simd, threads };
    return { version: Engine.version(), backendMode, simd, threads };
  },

  backend() {
    return backendInfo;
  },

  async catalog() {
    if (!modelIndex) modelIndex = await fetchJson(new URL('index.json', modelsBase));
    return { ...modelIndex, loaded: [...loaded.values()] };
  },

  async loadModel({ modelId }) {
    if (loaded.has(modelId)) return loaded.get(modelId);
    const { models } = await ops.catalog();
    const entry = models.find((m) => m.model_id === modelId);
    if (!entry) throw medinferError('model.not_found', 'no bundled model has that id');
    const [manifest, onnx] = await Promise.all([
      fetchBytes(new URL(entry.manifest, modelsBase)).then((b) => new TextDecoder().decode(b)),
      fetchBytes(new URL(entry.onnx, modelsBase)),
    ]);
    const info = engine.loadModel(manifest, onnx);
    // Re-plan every loaded model on the chosen backend (WebGPU when it can, for 'auto').
    backendInfo = await engine.useGpu(backendMode);
    loaded.set(modelId, info);
    return info;
  },

  inspect({ bytes }) {
    return engine.inspect(bytes);
  },

  render({ bytes, options }) {
    const preview = engine.render(bytes, options);
    return transferable(preview, [preview.rgba.buffer]);
  },

  async deidentify({ bytes, options }) {
    try {
      return deidentified(engine.deidentify(bytes, options));
    } catch (e) {
      // Clean Pixel Data needs the text detector: fetch it on first need, then retry.
      if (e?.code !== 'deid.detector_missing') throw e;
      const { textDetector } = await ops.catalog();
      if (!textDetector) throw e;
      engine.loadTextDetector(await fetchBytes(new URL(textDetector, modelsBase)));
      return deidentified(engine.deidentify(bytes, options));
    }
  },

  async infer({ bytes, options }) {
    if (options?.modelId) await ops.loadModel({ modelId: options.modelId });
    return engine.inferAsync(bytes, options);
  },

  // Runs the batch a chunk at a time, yielding between chunks so that a cancel can arrive.
  async inferBatch({ files, options = {} }, id) {
    if (options.modelId) await ops.loadModel({ modelId: options.modelId });
    const chunk = Math.min(Math.max(options.chunk ?? 8, 1), 64);
    const t0 = performance.now();
    let batchId;
    const items = [];
    if (engine.backend === 'gpu') {
      // WebGPU: one image per run (the plans are batch-1), awaited, same item shapes.
      batchId = options.batchId ?? crypto.randomUUID();
      for (let index = 0; index < files.length; index++) {
        if (cancelled.has(id)) throw medinferError('cancelled', 'the batch was cancelled');
        let item;
        try {
          item = { index, ...(await engine.inferAsync(files[index], { ...options, batchId })) };
        } catch (e) {
          if (e?.name !== 'MedinferError') throw e;
          item = { index, error: { code: e.code, message: e.message } };
        }
        items.push(item);
        self.postMessage({ id, progress: { done: items.length, total: files.length, item } });
      }
    }
    for (let start = 0; engine.backend !== 'gpu' && start < files.length; start += chunk) {
      if (cancelled.has(id)) throw medinferError('cancelled', 'the batch was cancelled');
      const part = engine.inferBatch(files.slice(start, start + chunk), { ...options, chunk, batchId }, undefined);
      batchId = part.batch_id;
      for (const item of part.items) {
        item.index += start;
        items.push(item);
        self.postMessage({ id, progress: { done: items.length, total: files.length, item } });
      }
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
    const successful = items.filter((i) => !i.error).length;
    return {
      batch_id: batchId ?? null,
      total_images: files.length,
      successful,
      failed: files.length - successful,
      items,
      total_ms: Math.round((performance.now() - t0) * 1000) / 1000,
    };
  },
};

function deidentified(out) {
  return transferable(out, [out.bytes.buffer]);
}

const TRANSFER = Symbol('transfer');
function transferable(value, buffers) {
  return { [TRANSFER]: buffers, value };
}

// Imports the glue of the build `simd` names, instantiates its .wasm and, above one thread,
// starts its pool of Workers.
async function loadBuild(base) {
  const glue = await import(new URL(BUILDS[simd].glue, base));
  await glue.default({ module_or_path: new URL(BUILDS[simd].wasm, base) });
  if (threads > 1) await glue.initThreads(threads);
  return glue;
}

function medinferError(code, message) {
  const e = new Error(message);
  e.name = 'MedinferError';
  e.code = code;
  return e;
}

async function fetchBytes(url) {
  let response;
  try {
    response = await fetch(url);
  } catch {
    throw medinferError('network.unavailable', 'a model file could not be fetched (offline?)');
  }
  if (!response.ok) throw medinferError('network.unavailable', `a model file answered HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function fetchJson(url) {
  return JSON.parse(new TextDecoder().decode(await fetchBytes(url)));
}

async function pump() {
  if (pumping) return;
  pumping = true;
  while (queue.length) {
    // Let pending messages (cancels among them) arrive before the next request starts.
    await new Promise((resolve) => setTimeout(resolve, 0));
    const { id, op, args } = queue.shift();
    if (cancelled.delete(id)) continue;
    try {
      if (op !== 'init' && !engine) throw medinferError('worker.not_ready', 'init was not called');
      const fn = ops[op];
      if (!fn) throw medinferError('worker.unknown_op', `unknown operation ${op}`);
      const out = await fn(args ?? {}, id);
      if (out && out[TRANSFER]) self.postMessage({ id, ok: true, value: out.value }, out[TRANSFER]);
      else self.postMessage({ id, ok: true, value: out });
    } catch (e) {
      self.postMessage({
        id,
        ok: false,
        error: { name: e?.name ?? 'Error', code: e?.code ?? 'internal.error', message: String(e?.message ?? e) },
      });
    }
    cancelled.delete(id);
  }
  pumping = false;
}

self.onmessage = ({ data }) => {
  if (data.cancel !== undefined) {
    cancelled.add(data.cancel);
    return;
  }
  queue.push(data);
  pump();
};
