// Which of the bundle's three WebAssembly builds this engine can run: threaded (relaxed SIMD,
// shared memory, tract's matrix products on a pool of Workers) in a cross-origin isolated
// context; single-threaded relaxed SIMD (fused multiply-add in tract's matmul kernels) where
// it validates; else plain SIMD128. Shared by the worker (imported as a module) and the
// service worker (importScripts, to precache the right one), so it exports nothing and sets
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
// Workers can share a WebAssembly memory only where the context is cross-origin isolated (the
// page served with `Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy:
// require-corp`; Chromium creates a shared memory elsewhere too, but cannot post it); the
// threaded build is also a relaxed-SIMD build.
const CAN_THREAD = HAS_RELAXED_SIMD && self.crossOriginIsolated === true && typeof SharedArrayBuffer === 'function';

self.medinferWasm = {
  /** The .wasm of each single-threaded build, relative to the bundle's base. */
  files: {
    'relaxed-simd': 'pkg/medinfer_wasm_relaxed_bg.wasm',
    simd128: 'pkg/medinfer_wasm_bg.wasm',
  },
  /** The JS glue of the single-threaded builds (one for both). */
  glue: 'pkg/medinfer_wasm.js',
  /** The threaded build: its own glue and .wasm, and the list of every file it loads. */
  threaded: {
    glue: 'pkg/threads/medinfer_wasm.js',
    wasm: 'pkg/threads/medinfer_wasm_bg.wasm',
    files: 'pkg/threads/files.json',
  },
  hasRelaxedSimd: HAS_RELAXED_SIMD,
  canThread: CAN_THREAD,
  /** The single-threaded build `auto` picks here. */
  best: HAS_RELAXED_SIMD ? 'relaxed-simd' : 'simd128',
  /** The threads `auto` starts: one per logical core (the calling worker waits while they
   *  work), 1 where the threaded build cannot run. */
  autoThreads: CAN_THREAD ? Math.min(Math.max(navigator.hardwareConcurrency || 1, 1), 16) : 1,
};
