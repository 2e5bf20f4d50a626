// Which of the bundle's two WebAssembly builds this engine can run: the relaxed-SIMD build
// (fused multiply-add in tract's matmul kernels; atomics and a shared memory, so that in a
// cross-origin isolated context tract's matrix products run on a pool of Workers, and on one
// thread elsewhere) where relaxed SIMD validates and a shared memory can be created; else
// plain SIMD128 on one thread. Shared by the worker (imported as a module) and the service
// worker (importScripts, to precache the right one), so it exports nothing and sets
// `self.medinferWasm` instead.

// The smallest module using relaxed SIMD: () -> v128 { f32x4.relaxed_madd(splat 1, splat 1,
// splat 1) }. Engines without the proposal fail to validate it.
const RELAXED_SIMD_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
  0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // type section: [] -> [v128]
  0x03, 0x02, 0x01, 0x00, // function section: one function of type 0
  0x0a, 0x13, 0x01, 0x11, 0x00, // code section: one body of 17 bytes, no locals
  0x41, 0x01, 0xfd, 0x11, 0x41, 0x01, 0xfd, 0x11, 0x41, 0x01, 0xfd, 0x11, // 3 × i32x4.splat(1)
  0xfd, 0x85, 0x02, 0x0b, // f32x4.relaxed_madd, end
]);

// The engine cannot change under a running script: validate once.
const HAS_RELAXED_SIMD = WebAssembly.validate(RELAXED_SIMD_PROBE);
// The relaxed-SIMD build's memory is shared (its glue creates it with `shared: true`).
// Chromium creates one in any context; an engine that refuses outside a cross-origin isolated
// one gets the SIMD128 build there.
function canShareMemory() {
  try {
    return new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true }).buffer !== undefined;
  } catch {
    return false;
  }
}
const HAS_RELAXED_BUILD = HAS_RELAXED_SIMD && canShareMemory();
// Workers can share that memory only where the context is cross-origin isolated (the page
// served with `Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy:
// require-corp`): elsewhere it cannot be posted to them, and the build runs on one thread.
const CAN_THREAD = HAS_RELAXED_BUILD && self.crossOriginIsolated === true && typeof SharedArrayBuffer === 'function';

self.medinferWasm = {
  /** Each build's JS glue and .wasm, relative to the bundle's base; the relaxed-SIMD
   *  (threaded) build also lists every file it loads, its Workers' included. */
  builds: {
    'relaxed-simd': {
      glue: 'pkg/threads/medinfer_wasm.js',
      wasm: 'pkg/threads/medinfer_wasm_bg.wasm',
      files: 'pkg/threads/files.json',
    },
    simd128: { glue: 'pkg/medinfer_wasm.js', wasm: 'pkg/medinfer_wasm_bg.wasm' },
  },
  /** The engine validates relaxed SIMD. */
  hasRelaxedSimd: HAS_RELAXED_SIMD,
  /** ... and can run the relaxed-SIMD build (a shared memory can be created here). */
  hasRelaxedBuild: HAS_RELAXED_BUILD,
  /** The relaxed-SIMD build can start a pool of Workers here. */
  canThread: CAN_THREAD,
  /** The build `auto` picks here. */
  best: HAS_RELAXED_BUILD ? 'relaxed-simd' : 'simd128',
  /** The threads `auto` starts: one per logical core (the calling worker waits while they
   *  work), 1 where no pool can start. */
  autoThreads: CAN_THREAD ? Math.min(Math.max(navigator.hardwareConcurrency || 1, 1), 16) : 1,
};
