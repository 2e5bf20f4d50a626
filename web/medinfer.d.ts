// Types of the worker client (medinfer.js). The result types are those of the wasm bundle
// (pkg/medinfer_wasm.d.ts, generated from the Rust API by wasm-bindgen).
import type {
  BackendInfo, BatchItem, BatchProgress, BatchResult, DeidentifyOptions, Deidentified, FileInfo,
  InferenceResult, ModelInfo, ModelPlacement, Preview, RenderOptions,
} from './pkg/medinfer_wasm.js';

export type {
  BackendInfo, BatchItem, BatchProgress, BatchResult, DeidentifyOptions, Deidentified, FileInfo,
  InferenceResult, ModelInfo, ModelPlacement, Preview, RenderOptions,
};

/** Anything holding a file's bytes; always copied, never transferred or detached. */
export type Input = ArrayBuffer | ArrayBufferView | Blob;

export interface CallOptions {
  /** Aborting rejects with an AbortError at once; queued work is dropped, batches stop. */
  signal?: AbortSignal;
}

/** Rejection reason for every failure: `code` is the server's stable error code. */
export class MedinferError extends Error {
  readonly name: 'MedinferError';
  readonly code: string;
}

export interface CatalogEntry {
  model_id: string;
  name: string;
  version: string;
  disclaimer: string;
  manifest: string;
  onnx: string;
  bytes: number;
}

export interface Catalog {
  default: string;
  models: CatalogEntry[];
  textDetector: string | null;
  loaded: ModelInfo[];
}

export class Medinfer {
  /** Starts the worker and the wasm module from `base` (default: where medinfer.js is). */
  /** `backend`: 'auto' (default: WebGPU when the browser gives an adapter and the models
   *  plan on it, else WebAssembly SIMD), 'gpu' (WebGPU or an error) or 'cpu'.
   *  `simd`: which WebAssembly build to load: 'auto' (default: relaxed SIMD where the browser
   *  validates it and can create a shared memory, else SIMD128), or either one forced
   *  ('relaxed-simd' rejects with `input.options` where it cannot run).
   *  `threads`: threads for the CPU path's matrix products: 'auto' (default: one per logical
   *  core, up to 16, where the page is cross-origin isolated and the relaxed-SIMD build runs;
   *  else 1), or a count from 1 to 64 (above 1 rejects with `input.options` where threads
   *  cannot run). */
  static create(options?: {
    base?: URL | string;
    deidKey?: Uint8Array;
    backend?: 'auto' | 'gpu' | 'cpu';
    simd?: 'auto' | 'relaxed-simd' | 'simd128';
    threads?: 'auto' | number;
    signal?: AbortSignal;
  }): Promise<Medinfer>;
  /** What runs the models (settled after each model load). */
  backend(call?: CallOptions): Promise<BackendInfo>;
  readonly info: { version: string; backendMode: 'auto' | 'gpu' | 'cpu'; simd: 'relaxed-simd' | 'simd128'; threads: number };
  catalog(options?: CallOptions): Promise<Catalog>;
  loadModel(modelId: string, options?: CallOptions): Promise<ModelInfo>;
  inspect(input: Input, options?: CallOptions): Promise<FileInfo>;
  render(input: Input, options?: RenderOptions, call?: CallOptions): Promise<Preview>;
  deidentify(input: Input, options?: DeidentifyOptions, call?: CallOptions): Promise<Deidentified>;
  infer(input: Input, options?: { modelId?: string; frame?: number }, call?: CallOptions): Promise<InferenceResult>;
  inferBatch(
    inputs: Iterable<Input>,
    options?: { modelId?: string; frame?: number; chunk?: number; onProgress?: (p: BatchProgress) => void } & CallOptions,
  ): Promise<BatchResult>;
  /** Stops the worker immediately; pending calls reject with code `worker.terminated`. */
  terminate(): void;
}
