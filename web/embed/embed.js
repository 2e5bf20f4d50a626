// How a web DICOM viewer embeds medinfer. The "viewer" here is deliberately tiny: it keeps one
// ArrayBuffer per instance (as Cornerstone3D's image loader and OHIF do), shows the current
// one, and draws an overlay. The medinfer part is the three calls marked INTEGRATION.

import { Medinfer } from '../medinfer.js';

const MODEL = new URLSearchParams(location.search).get('model') ?? 'mobilenetv2-chexnet';
const IMAGE_IDS = ['CT_small.dcm', 'MR_small.dcm', 'RG1_J2KI.dcm'].map((f) => `wadouri:../samples/${f}`);

// --- the host viewer's own state: imageId -> ArrayBuffer -------------------------------
const cache = new Map();
async function loadInstance(imageId) {
  if (!cache.has(imageId)) {
    const response = await fetch(imageId.replace(/^wadouri:/, ''));
    cache.set(imageId, await response.arrayBuffer());
  }
  return cache.get(imageId);
}

// --- INTEGRATION 1: one worker-backed engine for the whole viewer ------------------------
const medinfer = await Medinfer.create({ base: new URL('../', import.meta.url) });
// --- INTEGRATION 2: load the model once ---------------------------------------------------
const model = await medinfer.loadModel(MODEL);

let inflight = null;
async function show(imageId) {
  inflight?.abort(); // a newer instance supersedes the running inference
  const controller = new AbortController();
  inflight = controller;
  for (const b of document.querySelectorAll('#instances button')) b.setAttribute('aria-current', String(b.dataset.id === imageId));
  const buffer = await loadInstance(imageId);

  // The viewer renders with its own pipeline; medinfer's render stands in for it here.
  const preview = await medinfer.render(buffer, {}, { signal: controller.signal });
  const canvas = document.getElementById('viewport');
  canvas.width = preview.width;
  canvas.height = preview.height;
  canvas.getContext('2d').putImageData(new ImageData(preview.rgba, preview.width, preview.height), 0, 0);
  document.getElementById('corner').textContent = `${imageId.split('/').pop()} · ${preview.width}×${preview.height}`;

  setOverlay([], 'Classifying…');
  try {
    // --- INTEGRATION 3: classify the instance's ArrayBuffer (copied; the viewer keeps it) ---
    const result = await medinfer.infer(buffer, { modelId: MODEL }, { signal: controller.signal });
    const top = Object.entries(result.predictions).slice(0, 3);
    setOverlay(top, `${result.model_id} · ${result.timing_ms.total_ms.toFixed(0)} ms · ${model.disclaimer}`);
    document.body.dataset.result = JSON.stringify({ imageId, ...result });
  } catch (e) {
    if (e.name !== 'AbortError') setOverlay([], `${e.code}: ${e.message}`);
  }
}

function setOverlay(findings, note) {
  const list = document.getElementById('findings');
  list.replaceChildren(...findings.map(([label, score]) => {
    const li = document.createElement('li');
    li.textContent = `${label} ${(score * 100).toFixed(1)}%`;
    return li;
  }));
  document.getElementById('overlay-note').textContent = note;
}

for (const id of IMAGE_IDS) {
  const button = document.createElement('button');
  button.type = 'button';
  button.dataset.id = id;
  button.textContent = id.split('/').pop();
  button.addEventListener('click', () => show(id));
  document.getElementById('instances').append(button);
}
await show(IMAGE_IDS[0]);
document.body.dataset.ready = 'true';
