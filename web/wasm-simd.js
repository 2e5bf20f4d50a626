// Which of the bundle's two WebAssembly builds this engine runs: relaxed SIMD (fused
// multiply-add in tract's matmul kernels) where it validates, else plain SIMD128. Shared by the
// worker (imported as a module) and the service worker (importScripts, to precache the right
// one), so it exports nothing and sets `self.medinferWasm` instead.

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

self.medinferWasm = {
  /** The .wasm of each build, relative to the bundle's base. */
  files: {
    'relaxed-simd': 'pkg/medinfer_wasm_relaxed_bg.wasm',
    simd128: 'pkg/medinfer_wasm_bg.wasm',
  },
  hasRelaxedSimd: HAS_RELAXED_SIMD,
  /** The build `auto` picks here. */
  best: HAS_RELAXED_SIMD ? 'relaxed-simd' : 'simd128',
};
