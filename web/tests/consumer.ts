// A viewer developer's code against the published declarations; `tsc --strict` must accept it.
import { Medinfer, MedinferError, type InferenceResult, type BatchItem } from '../medinfer.js';
import { Engine } from '../pkg/medinfer_wasm.js';

export async function classify(buffer: ArrayBuffer, signal: AbortSignal): Promise<string> {
  const medinfer = await Medinfer.create({ base: '/medinfer/', simd: 'auto' });
  const build: 'relaxed-simd' | 'simd128' = medinfer.info.simd;
  const running: 'relaxed-simd' | 'simd128' = (await medinfer.backend()).simd;
  const bundleSimd: string = Engine.simd();
  const model = await medinfer.loadModel('mobilenetv2-chexnet', { signal });
  const result: InferenceResult = await medinfer.infer(buffer, { modelId: model.model_id }, { signal });
  const top: [string, number][] = Object.entries(result.predictions).slice(0, 3);
  const batch = await medinfer.inferBatch([buffer, new Uint8Array(buffer)], {
    chunk: 4,
    onProgress: ({ done, total, item }) => console.log(done, total, 'error' in item ? item.error.code : item.top_label),
  });
  const failed: BatchItem[] = batch.items.filter((i) => 'error' in i);
  const preview = await medinfer.render(buffer, { window: { center: 40, width: 400 } });
  const image = new ImageData(preview.rgba, preview.width, preview.height);
  const deid = await medinfer.deidentify(buffer, { options: ['retain-uids'], pixelCleaning: 'auto' });
  const pseudonym: string = deid.report.patient_pseudonym;
  const engine = new Engine({ deidKey: new Uint8Array(32) });
  const info = engine.inspect(new Uint8Array(buffer));
  try {
    await medinfer.infer(new Blob([]));
  } catch (e) {
    if (e instanceof MedinferError) console.log(e.code);
  }
  return `${build} ${running} ${bundleSimd} ${top[0][0]} ${failed.length} ${image.width} ${pseudonym} ${info.format} ${result.timing_ms.total_ms}`;
}
