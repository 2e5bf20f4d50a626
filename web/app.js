// The medinfer page: files in, predictions and de-identified DICOM out, all inside this tab.
// Every byte stays in memory here and in the worker; the only requests are for the page's
// own files (the bundle and the models).

import { Medinfer } from './medinfer.js';

const $ = (id) => document.getElementById(id);
const rows = []; // {id, name, bytes, kind, status, result, error, deid, tr}
let medinfer;
let catalog;
let selected = null;
const running = new Set(); // AbortControllers of the batches in progress
let modelId;
let pendingRender = null;
let rendering = false;

const KINDS = { dicom: 'DICOM', png: 'PNG', jpeg: 'JPEG' };

function kindOf(bytes) {
  const at = (o, s) => [...s].every((c, i) => bytes[o + i] === c.charCodeAt(0));
  if (bytes.length >= 132 && at(128, 'DICM')) return 'dicom';
  if (bytes.length >= 4 && at(0, 'DICM')) return 'dicom';
  if (bytes[0] === 0x89 && at(1, 'PNG')) return 'png';
  if (bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return 'jpeg';
  return null;
}

function setStatus(text, cls = '') {
  const el = $('engine-status');
  el.textContent = text;
  el.className = `pill ${cls}`;
}

async function start() {
  updateNetwork();
  addEventListener('online', updateNetwork);
  addEventListener('offline', updateNetwork);
  if ('serviceWorker' in navigator && location.protocol !== 'file:') {
    // Keeps the page and fetched models available offline; failure is harmless.
    navigator.serviceWorker.register('sw.js').catch(() => {});
  }
  try {
    // ?backend=cpu|gpu|auto forces a backend; auto picks WebGPU when the browser has it.
    // ?simd=relaxed-simd|simd128 forces a WebAssembly build; auto takes relaxed SIMD if it can.
    // ?threads=N forces a thread count; auto uses every core where the page is isolated.
    const params = new URLSearchParams(location.search);
    medinfer = await Medinfer.create({
      base: new URL('./', location.href),
      backend: params.get('backend') ?? 'auto',
      simd: params.get('simd') ?? 'auto',
      threads: params.has('threads') ? Number(params.get('threads')) : 'auto',
    });
    $('version').textContent = medinfer.info.version;
    catalog = await medinfer.catalog();
    const select = $('model');
    for (const m of catalog.models) {
      const opt = new Option(`${m.name} (${(m.bytes / 1e6).toFixed(0)} MB)`, m.model_id);
      select.add(opt);
    }
    modelId = new URLSearchParams(location.search).get('model') ?? catalog.default;
    select.value = modelId;
    select.disabled = false;
    select.addEventListener('change', () => changeModel(select.value));
    await loadModel(modelId);
    document.body.dataset.ready = 'true';
  } catch (e) {
    setStatus(`Failed to start: ${e.message}`, 'err');
    document.body.dataset.ready = 'error';
  }
}

async function loadModel(id) {
  setStatus('Loading model…');
  const entry = catalog.models.find((m) => m.model_id === id);
  $('model-note').textContent = entry?.disclaimer ?? '';
  $('disclaimer').textContent = entry?.disclaimer ?? '';
  const info = await medinfer.loadModel(id);
  showBackend(await medinfer.backend());
  setStatus(`Ready · model loaded in ${Math.round(info.load_ms)} ms`, 'ok');
  return info;
}

// The badge says what runs the model: WebGPU (with the adapter, and any op left on the
// CPU) or WebAssembly (relaxed) SIMD (with the reason when WebGPU was not taken).
function showBackend(info) {
  const badge = $('backend');
  badge.dataset.backend = info.backend;
  badge.dataset.simd = info.simd;
  badge.dataset.threads = String(info.threads);
  if (info.backend === 'gpu') {
    const fallback = [...new Set(info.models.flatMap((m) => m.cpu_ops))];
    badge.textContent = 'GPU · WebGPU';
    badge.title = `${info.adapter ?? 'WebGPU'}; ` + info.models.map((m) => `${m.model_id}: ${m.gpu_nodes} nodes on the GPU`).join(', ') +
      (fallback.length ? `; on the CPU: ${fallback.join(', ')}` : '');
  } else {
    badge.textContent = (info.simd === 'relaxed-simd' ? 'CPU · WebAssembly relaxed SIMD' : 'CPU · WebAssembly SIMD') +
      (info.threads > 1 ? ` · ${info.threads} threads` : '');
    badge.title = info.reason ? `WebGPU not used: ${info.reason}` : 'Where the model runs';
  }
}

async function changeModel(id) {
  cancelAll();
  modelId = id;
  try {
    await loadModel(id);
    const again = rows.filter((r) => r.status !== 'error' || r.error?.code?.startsWith('inference'));
    for (const r of again) { r.result = null; setRow(r, 'queued'); }
    await process(again);
  } catch (e) {
    setStatus(`Model failed: ${e.message}`, 'err');
  }
}

function cancelAll() {
  for (const c of running) c.abort();
}

function updateNetwork() {
  $('network').hidden = navigator.onLine;
}

// ---- files in ----

async function addFiles(files) {
  const added = [];
  for (const file of files) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    const row = { id: rows.length, name: file.webkitRelativePath || file.name, bytes, kind: kindOf(bytes), status: 'queued' };
    rows.push(row);
    row.tr = renderRow(row);
    added.push(row);
  }
  $('empty').hidden = rows.length > 0;
  $('clear').disabled = rows.length === 0;
  await process(added);
}

async function entriesToFiles(items) {
  const out = [];
  const walk = async (entry, path) => {
    if (entry.isFile) {
      const file = await new Promise((res, rej) => entry.file(res, rej));
      out.push(new File([file], file.name, { type: file.type }));
      Object.defineProperty(out[out.length - 1], 'webkitRelativePath', { value: path + file.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      let batch;
      do {
        batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        for (const child of batch) await walk(child, `${path}${entry.name}/`);
      } while (batch.length);
    }
  };
  for (const item of items) {
    const entry = item.webkitGetAsEntry?.();
    if (entry) await walk(entry, '');
    else if (item.kind === 'file') out.push(item.getAsFile());
  }
  return out;
}

// ---- processing ----

async function process(batch) {
  if (!batch.length) return;
  const controller = new AbortController();
  running.add(controller);
  $('cancel').disabled = false;
  showProgress(0, batch.length);
  for (const r of batch) setRow(r, 'running');
  try {
    await medinfer.inferBatch(batch.map((r) => r.bytes), {
      modelId,
      signal: controller.signal,
      onProgress: ({ done, total, item }) => {
        const row = batch[item.index];
        if (item.error) {
          row.error = item.error;
          setRow(row, 'error');
        } else {
          const { index, ...result } = item;
          row.result = result;
          row.error = null;
          if (!performance.getEntriesByName('first-prediction').length) performance.mark('first-prediction');
          setRow(row, row.kind === 'dicom' && !row.deid ? 'de-identifying' : 'done');
        }
        showProgress(done, total);
        if (!selected || selected === row) select(row);
      },
    });
    for (const row of batch.filter((r) => r.kind === 'dicom' && r.result && !r.deid)) {
      await deidentify(row, controller.signal);
    }
  } catch (e) {
    if (e.name === 'AbortError') {
      for (const r of batch.filter((r) => r.status === 'running' || r.status === 'queued')) setRow(r, 'cancelled');
      // Classified, but de-identification was cancelled: the result stands.
      for (const r of batch.filter((r) => r.status === 'de-identifying')) setRow(r, 'done');
    } else {
      for (const r of batch.filter((r) => r.status === 'running')) { r.error = e; setRow(r, 'error'); }
    }
  } finally {
    running.delete(controller);
    if (!running.size) {
      $('cancel').disabled = true;
      $('progress-wrap').hidden = true;
    }
    const any = rows.some((r) => r.result);
    $('export-json').disabled = !any;
    $('export-csv').disabled = !any;
    document.body.dataset.busy = 'false';
  }
}

async function deidentify(row, signal) {
  try {
    row.deid = await medinfer.deidentify(row.bytes, {}, { signal });
    setRow(row, 'done');
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    row.deidError = e;
    setRow(row, 'done');
  }
  if (selected === row) select(row);
}

function showProgress(done, total) {
  document.body.dataset.busy = done < total ? 'true' : 'false';
  $('progress-wrap').hidden = false;
  $('progress').max = total;
  $('progress').value = done;
  $('progress-text').textContent = `${done} / ${total}`;
}

// ---- the list ----

function renderRow(row) {
  const tr = document.createElement('tr');
  tr.dataset.index = row.id;
  tr.innerHTML = '<td class="file"><button type="button"></button></td><td class="kind"></td><td class="state"></td><td class="top"></td>';
  tr.querySelector('button').textContent = row.name;
  tr.querySelector('.kind').textContent = KINDS[row.kind] ?? 'unknown';
  tr.addEventListener('click', () => select(row));
  $('files').tBodies[0].append(tr);
  setRow(row, row.status);
  return tr;
}

function setRow(row, status) {
  row.status = status;
  const tr = row.tr;
  if (!tr) return;
  tr.dataset.status = status;
  const state = tr.querySelector('.state');
  state.className = `state state-${status}`;
  state.textContent = status === 'error' ? 'Error' : status[0].toUpperCase() + status.slice(1);
  if (status === 'error') {
    const code = document.createElement('div');
    code.className = 'code';
    code.textContent = `${row.error?.code ?? 'error'}: ${row.error?.message ?? ''}`;
    state.append(code);
  }
  tr.querySelector('.top').textContent = row.result ? `${row.result.top_label} ${(row.result.confidence_score * 100).toFixed(1)}%` : '';
}

// ---- the selected file ----

function select(row) {
  selected = row;
  for (const r of rows) r.tr?.setAttribute('aria-selected', String(r === row));
  $('detail').hidden = false;
  $('detail-title').textContent = row.name;
  const err = $('detail-error');
  err.hidden = !row.error;
  err.textContent = row.error ? `${row.error.code}: ${row.error.message}` : '';
  showPredictions(row);
  showDeid(row);
  $('original-toggle').hidden = !row.deid;
  if (row.kind && !row.error) requestRender(row, {});
  else clearCanvas();
}

function showPredictions(row) {
  const list = $('predictions');
  list.replaceChildren();
  $('timing').textContent = '';
  if (!row.result) return;
  for (const [label, score] of Object.entries(row.result.predictions)) {
    const li = document.createElement('li');
    li.innerHTML = '<span class="label"></span><span class="bar-track"><span class="bar-fill"></span></span><span class="score"></span>';
    li.querySelector('.label').textContent = label;
    li.querySelector('.bar-fill').style.width = `${(score * 100).toFixed(1)}%`;
    li.querySelector('.score').textContent = score.toFixed(3);
    li.setAttribute('aria-label', `${label}: ${score.toFixed(3)}`);
    list.append(li);
  }
  const t = row.result.timing_ms;
  $('timing').textContent = `${row.result.model_id} ${row.result.model_version} · decode ${t.decode_ms.toFixed(1)} ms · infer ${t.infer_ms.toFixed(1)} ms · total ${t.total_ms.toFixed(1)} ms` +
    (row.result.patient_id ? ` · patient ${row.result.patient_id}` : '');
}

function showDeid(row) {
  const box = $('deid');
  box.hidden = row.kind !== 'dicom' || !(row.deid || row.deidError);
  if (box.hidden) return;
  const summary = $('deid-summary');
  summary.replaceChildren();
  const add = (k, v) => {
    const dt = document.createElement('dt'); dt.textContent = k;
    const dd = document.createElement('dd'); dd.textContent = v;
    summary.append(dt, dd);
  };
  if (row.deidError) {
    add('Result', `${row.deidError.code}: ${row.deidError.message}`);
    $('download-deid').disabled = true;
    return;
  }
  const r = row.deid.report;
  add('Patient pseudonym', r.patient_pseudonym);
  add('Profile', r.method_codes.join(', '));
  add('Attributes changed', String(r.attributes.filter((a) => a.outcome !== 'kept').length));
  add('Private attributes removed', String(r.private_removed));
  add('Graphics removed', String(r.graphics_removed));
  add('Burned-in text', r.pixel_cleaning === 'applied' ? `${r.redactions.length} region(s) blacked out` : r.pixel_cleaning.replace('_', ' '));
  $('download-deid').disabled = false;
  $('deid-count').textContent = String(r.attributes.length);
  const body = $('deid-table').tBodies[0];
  body.replaceChildren();
  for (const a of r.attributes) {
    const tr = document.createElement('tr');
    for (const v of [a.keyword || '(private)', a.path, a.outcome.replace('_', ' ')]) {
      const td = document.createElement('td'); td.textContent = v; tr.append(td);
    }
    body.append(tr);
  }
}

function requestRender(row, options) {
  pendingRender = { row, options };
  if (!rendering) drain();
}

// Renders the latest request only, so dragging a slider never queues stale frames.
async function drain() {
  rendering = true;
  while (pendingRender) {
    const { row, options } = pendingRender;
    pendingRender = null;
    try {
      // Once de-identified, the preview shows the de-identified file (burned-in text blacked
      // out) unless the user asks for the original.
      const source = row.deid && !$('show-original').checked ? row.deid.bytes : row.bytes;
      const p = await medinfer.render(source, options);
      if (selected !== row) continue;
      const canvas = $('preview');
      canvas.width = p.width;
      canvas.height = p.height;
      canvas.getContext('2d').putImageData(new ImageData(p.rgba, p.width, p.height), 0, 0);
      canvas.dataset.rendered = 'true';
      setWindowControls(row, p);
      $('file-facts').textContent = `${p.width} × ${p.height}` + (p.frames > 1 ? ` · frame ${p.frame + 1} of ${p.frames}` : '') +
        (source === row.bytes ? '' : ' · de-identified');
    } catch (e) {
      if (selected === row) { clearCanvas(); $('file-facts').textContent = `${e.code}: ${e.message}`; }
    }
  }
  rendering = false;
}

function clearCanvas() {
  const canvas = $('preview');
  canvas.getContext('2d').clearRect(0, 0, canvas.width, canvas.height);
  canvas.dataset.rendered = 'false';
}

function setWindowControls(row, p) {
  $('wl').hidden = !p.window; // colour DICOM has no window
  row.view = { frame: p.frame, window: p.window };
  $('frame-label').hidden = p.frames <= 1;
  $('frame').max = p.frames - 1;
  if (!p.window) return;
  const c = $('wl-center');
  const w = $('wl-width');
  const span = Math.max(p.range.max - p.range.min, 1);
  c.min = p.range.min - span / 2; c.max = p.range.max + span / 2;
  w.min = 1; w.max = span * 2;
  c.value = p.window.center; w.value = p.window.width;
  $('wl-center-out').textContent = Math.round(p.window.center);
  $('wl-width-out').textContent = Math.round(p.window.width);
}

function onWindowInput() {
  if (!selected) return;
  const window = { center: Number($('wl-center').value), width: Math.max(Number($('wl-width').value), 1) };
  $('wl-center-out').textContent = Math.round(window.center);
  $('wl-width-out').textContent = Math.round(window.width);
  requestRender(selected, { frame: selected.view?.frame ?? 0, window });
}

// ---- export ----

function download(name, type, data) {
  const url = URL.createObjectURL(new Blob([data], { type }));
  const a = Object.assign(document.createElement('a'), { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function exportJson() {
  const out = rows.map((r) => (r.result ? { file: r.name, ...r.result } : { file: r.name, error: r.error ? { code: r.error.code, message: r.error.message } : { code: r.status, message: '' } }));
  download('medinfer-results.json', 'application/json', JSON.stringify(out, null, 2));
}

function exportCsv() {
  const labels = [...new Set(rows.flatMap((r) => (r.result ? Object.keys(r.result.predictions) : [])))].sort();
  const head = ['file', 'inference_id', 'model_id', 'model_version', 'patient_id', 'top_label', 'confidence_score', ...labels, 'total_ms', 'error_code'];
  const esc = (v) => { const s = String(v ?? ''); return /[",\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s; };
  const lines = [head.join(',')];
  for (const r of rows) {
    const x = r.result;
    lines.push([r.name, x?.inference_id, x?.model_id, x?.model_version, x?.patient_id, x?.top_label, x?.confidence_score,
      ...labels.map((l) => x?.predictions[l]), x?.timing_ms.total_ms, r.error?.code].map(esc).join(','));
  }
  download('medinfer-results.csv', 'text/csv', lines.join('\n') + '\n');
}

// ---- wiring ----

function wire() {
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', async (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const items = [...(e.dataTransfer.items ?? [])];
    const files = items.length ? await entriesToFiles(items) : [...e.dataTransfer.files];
    if (medinfer) addFiles(files);
  });
  drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); $('file-input').click(); } });
  for (const id of ['file-input', 'folder-input']) {
    $(id).addEventListener('change', (e) => { const files = [...e.target.files]; e.target.value = ''; if (medinfer) addFiles(files); });
  }
  $('cancel').addEventListener('click', cancelAll);
  $('clear').addEventListener('click', () => {
    cancelAll();
    rows.length = 0; selected = null;
    $('files').tBodies[0].replaceChildren();
    $('detail').hidden = true; $('empty').hidden = false;
    for (const id of ['clear', 'export-json', 'export-csv']) $(id).disabled = true;
  });
  $('export-json').addEventListener('click', exportJson);
  $('export-csv').addEventListener('click', exportCsv);
  $('wl-center').addEventListener('input', onWindowInput);
  $('wl-width').addEventListener('input', onWindowInput);
  $('show-original').addEventListener('change', () => selected && requestRender(selected, { frame: selected.view?.frame ?? 0 }));
  $('frame').addEventListener('change', () => selected && requestRender(selected, { frame: Number($('frame').value) }));
  $('wl-reset').addEventListener('click', () => selected && requestRender(selected, { frame: selected.view?.frame ?? 0 }));
  $('download-deid').addEventListener('click', () => {
    if (!selected?.deid) return;
    // Named by the pseudonym: the original file name may itself identify the patient.
    download(`${selected.deid.report.patient_pseudonym}_${selected.id + 1}.dcm`, 'application/dicom', selected.deid.bytes);
  });
}

wire();
start();
