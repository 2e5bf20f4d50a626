// medinfer in the browser: a promise-based, cancellable client for the medinfer Web Worker.
//
//   import { Medinfer } from './medinfer.js';
//   const medinfer = await Medinfer.create();               // worker + wasm, no model yet
//   await medinfer.loadModel('mobilenetv2-chexnet');
//   const result = await medinfer.infer(arrayBuffer, { modelId: 'mobilenetv2-chexnet' });
//
// Every call takes an optional AbortSignal: aborting rejects the promise at once with an
// AbortError, drops the request if it has not started, and stops a batch at its next chunk.
// Inputs (ArrayBuffer, typed array or Blob/File) are copied, never transferred, so a viewer
// keeps its own buffers. Failures reject with an Error named MedinferError whose `code` is the
// server's stable code (input.dimensions, decode.dicom, model.not_found, …).

export class MedinferError extends Error {
  constructor({ code, message }) {
    super(message);
    this.name = 'MedinferError';
    this.code = code;
  }
}

export class Medinfer {
  #worker;
  #next = 1;
  #pending = new Map();

  /** Starts the worker and the wasm module. `base`: where the bundle lives (default: here). */
  static async create({ base = new URL('./', import.meta.url), deidKey, backend, simd, threads, signal } = {}) {
    const worker = new Worker(new URL('medinfer-worker.js', base), { type: 'module', name: 'medinfer' });
    const client = new Medinfer(worker);
    try {
      client.info = await client.#call('init', { base: String(base), deidKey, backend, simd, threads }, { signal });
    } catch (e) {
      worker.terminate();
      throw e;
    }
    return client;
  }

  constructor(worker) {
    this.#worker = worker;
    worker.onmessage = ({ data }) => {
      const pending = this.#pending.get(data.id);
      if (!pending) return;
      if (data.progress) {
        pending.onProgress?.(data.progress);
        return;
      }
      this.#pending.delete(data.id);
      pending.cleanup();
      if (data.ok) pending.resolve(data.value);
      else pending.reject(new MedinferError(data.error));
    };
    worker.onerror = (event) => {
      for (const [id, pending] of this.#pending) {
        this.#pending.delete(id);
        pending.cleanup();
        pending.reject(new MedinferError({ code: 'worker.crashed', message: event.message || 'the worker stopped' }));
      }
    };
  }

  /** The bundled models ({models, default, textDetector}) and those loaded. */
  catalog({ signal } = {}) {
    return this.#call('catalog', {}, { signal });
  }

  /** Fetches and optimises a bundled model; resolves to its ModelInfo. */
  loadModel(modelId, { signal } = {}) {
    return this.#call('loadModel', { modelId }, { signal });
  }

  /** Format, size, dimensions and DICOM structure: never a patient attribute. */
  async inspect(input, { signal } = {}) {
    return this.#call('inspect', { bytes: await bytesOf(input) }, { signal });
  }

  /** RGBA preview with window/level: {width, height, rgba, window, range, frame, frames}. */
  async render(input, options = {}, { signal } = {}) {
    return this.#call('render', { bytes: await bytesOf(input), options }, { signal });
  }

  /** De-identified DICOM bytes and the report ({bytes, report}). */
  async deidentify(input, options = {}, { signal } = {}) {
    return this.#call('deidentify', { bytes: await bytesOf(input), options }, { signal });
  }

  /** One InferenceResult. options: {modelId, frame}. */
  /** What runs the models: WebGPU or the CPU, the adapter, and per model the nodes on the
   *  GPU and the ops left on the CPU. Settled after each model load. */
  async backend({ signal } = {}) {
    return this.#call('backend', {}, { signal });
  }

  async infer(input, options = {}, { signal } = {}) {
    return this.#call('infer', { bytes: await bytesOf(input), options }, { signal });
  }

  /** Many files, one model: {batch_id, total_images, successful, failed, items, total_ms}.
   * options: {modelId, frame, chunk, onProgress({done, total, item}), signal}. */
  async inferBatch(inputs, { onProgress, signal, ...options } = {}) {
    const files = await Promise.all([...inputs].map(bytesOf));
    return this.#call('inferBatch', { files, options }, { signal, onProgress });
  }

  /** Stops the worker at once (running work included); every pending call rejects. */
  terminate() {
    this.#worker.terminate();
    for (const [id, pending] of this.#pending) {
      this.#pending.delete(id);
      pending.cleanup();
      pending.reject(new MedinferError({ code: 'worker.terminated', message: 'the worker was terminated' }));
    }
  }

  #call(op, args, { signal, onProgress } = {}) {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(abortError(signal));
        return;
      }
      const id = this.#next++;
      const onAbort = () => {
        if (!this.#pending.delete(id)) return;
        this.#worker.postMessage({ cancel: id });
        reject(abortError(signal));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const cleanup = () => signal?.removeEventListener('abort', onAbort);
      this.#pending.set(id, { resolve, reject, onProgress, cleanup });
      this.#worker.postMessage({ id, op, args });
    });
  }
}

function abortError(signal) {
  return signal.reason instanceof Error ? signal.reason : new DOMException('the operation was aborted', 'AbortError');
}

/** A copy of the input's bytes as a Uint8Array. */
async function bytesOf(input) {
  if (input instanceof Blob) return new Uint8Array(await input.arrayBuffer());
  if (input instanceof ArrayBuffer) return new Uint8Array(input.slice(0));
  if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer.slice(input.byteOffset, input.byteOffset + input.byteLength));
  throw new MedinferError({ code: 'input.type', message: 'expected an ArrayBuffer, a typed array or a Blob' });
}
