// The TypeScript declarations (medinfer.d.ts and the wasm-bindgen ones) accept a viewer
// developer's code under `tsc --strict`.
import { test } from 'node:test';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { WEB } from './harness.mjs';

test('the TypeScript declarations type-check a consumer', () => {
  execFileSync(join(WEB, 'node_modules/.bin/tsc'), [
    '--noEmit', '--strict', '--target', 'es2022', '--module', 'es2022', '--moduleResolution', 'bundler',
    '--lib', 'es2022,esnext.disposable,dom', '--allowJs', 'false', '--skipLibCheck', 'false', join(WEB, 'tests/consumer.ts'),
  ], { stdio: 'inherit' });
});
