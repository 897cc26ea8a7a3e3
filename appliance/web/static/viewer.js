/* pipacs touch viewer: one series, stack scrolling, window/level, zoom/pan, cine; opened for a
   teaching case (?case=ID), its key images with their annotations, and for the teacher the
   key-image and annotation tools (see the "teaching case" section).
   The board only decodes pixels (numpy frames, cached on the server); windowing, zoom and
   drawing happen here in the browser. */
"use strict";

const seriesId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const stage = document.getElementById("stage");
const slider = document.getElementById("slider");
const PRESETS = { lung: [-600, 1500], mediastinum: [50, 350], bone: [400, 1800], brain: [40, 80], abdomen: [40, 400] };
const PRESET_KEYS = ["default", "lung", "mediastinum", "bone", "brain", "abdomen"];
const MAX_CACHED = 400;

const state = {
  frames: [], index: 0, wc: null, ww: null, zoom: 1, panX: 0, panY: 0, tool: "scroll",
  loaded: 0, drawn: 0, playing: false, study: null, series: null, anonymized: false, ready: false,
  // a teaching case: its document, whether we may edit it, the selected annotation, what was drawn
  caseId: new URLSearchParams(location.search).get("case"), case: null, editing: false, selected: -1,
  annotationsDrawn: 0, saved: 0, map: null, base: [], pendingCenter: null, merged: 0,
};
window.viewerState = state;   // read by the browser tests and handy when debugging
const cache = new Map();       // frame index -> {width, height, channels, data, min, max}
const pending = new Map();

// ------------------------------------------------------------------ metadata

function tagValue(ds, tag) {
  const e = ds[tag];
  return e && e.Value ? e.Value : null;
}
function first(ds, tag, fallback = null) {
  const v = tagValue(ds, tag);
  if (!v || !v.length) return fallback;
  const x = v[0];
  return x && typeof x === "object" && "Alphabetic" in x ? x.Alphabetic : x;
}

// our pages' requests: a refusal then brings no browser login dialog (the explorer has the sign-in form)
const PAGE = { "X-Requested-With": "pipacs" };

// who is looking: the teacher sees whom they are signed in as (a student sees nothing extra)
let SESSION = null;
async function showWho() {
  try {
    const s = SESSION || (SESSION = await getJson("/pipacs/session"));
    const who = document.getElementById("who");
    if (who && s.Role === "teacher") who.textContent = s.CanSignIn ? `Signed in as ${s.User}` : "Teacher";
    else if (who && s.Role === "student") who.textContent = "Student view";
  } catch (e) { /* the viewer works without it */ }
}

async function getJson(url) {
  const r = await fetch(url, { headers: { Accept: "application/json, application/dicom+json", ...PAGE } });
  if (!r.ok) {
    let msg = r.statusText;
    try { const j = await r.json(); msg = j.Message || msg; } catch (e) { /* keep */ }
    const err = new Error(msg); err.status = r.status; throw err;
  }
  return r.json();
}

function orientationLetter(v) {
  const axes = [[v[0], "L", "R"], [v[1], "P", "A"], [v[2], "S", "I"]]
    .filter(([x]) => Math.abs(x) > 0.25).sort((a, b) => Math.abs(b[0]) - Math.abs(a[0]));
  return axes.slice(0, 2).map(([x, pos, neg]) => (x > 0 ? pos : neg)).join("");
}

async function load() {
  let series, study, instances, meta;
  try {
    series = await getJson(`/series/${seriesId}`);
    [study, instances] = await Promise.all([getJson(`/studies/${series.ParentStudy}`), getJson(`/series/${seriesId}/instances`)]);
    meta = await getJson(`/dicom-web/studies/${study.MainDicomTags.StudyInstanceUID}/series/${series.MainDicomTags.SeriesInstanceUID}/metadata`);
  } catch (e) {
    showError(e.status === 404 ? "This series does not exist any more (it may have been deleted)." : `Cannot open the series: ${e.message}`);
    return;
  }
  state.series = series; state.study = study;
  document.getElementById("back").href = `/#/series/${seriesId}`;
  if (state.caseId && !(await loadCase())) return;
  const idBySop = new Map(instances.map(i => [i.MainDicomTags.SOPInstanceUID, i.ID]));
  const items = meta.map(ds => {
    const iop = (tagValue(ds, "00200037") || []).map(Number);
    const ipp = (tagValue(ds, "00200032") || []).map(Number);
    let pos = null;
    if (iop.length === 6 && ipp.length === 3) {
      const n = [iop[1] * iop[5] - iop[2] * iop[4], iop[2] * iop[3] - iop[0] * iop[5], iop[0] * iop[4] - iop[1] * iop[3]];
      pos = n[0] * ipp[0] + n[1] * ipp[1] + n[2] * ipp[2];
    }
    return { ds, id: idBySop.get(first(ds, "00080018")), pos, number: Number(first(ds, "00200013", 0)), iop };
  }).filter(x => x.id);
  const byPos = items.every(x => x.pos !== null) && new Set(items.map(x => x.pos)).size === items.length;
  items.sort((a, b) => (byPos ? a.pos - b.pos : a.number - b.number));
  for (const it of items) {
    const n = Number(first(it.ds, "00280008", 1)) || 1;
    for (let f = 0; f < n; f++) state.frames.push({ ...it, frame: f, frames: n });
  }
  if (!state.frames.length) { showError("This series holds no image."); return; }
  const ds0 = state.frames[0].ds;
  state.anonymized = first(ds0, "00120062") === "YES";
  state.frameTime = Number(first(ds0, "00181063", 100)) || 100;
  slider.max = String(state.frames.length - 1);
  document.getElementById("title").textContent =
    `${series.MainDicomTags.Modality || ""} ${series.MainDicomTags.SeriesDescription || ""} · ${study.MainDicomTags.StudyDescription || ""}`;
  const h = new URLSearchParams(location.hash.slice(1));
  state.index = Math.min(Math.max(Number(h.get("i")) || 0, 0), state.frames.length - 1);
  if (h.get("wc") && h.get("ww")) { state.wc = Number(h.get("wc")); state.ww = Number(h.get("ww")); }
  else if (state.case) openAtKeyImage();
  state.ready = true;
  resize();
  await show(state.index);
  prefetch();
}

// ------------------------------------------------------------------ pixels

function parseNpy(buf) {
  const bytes = new Uint8Array(buf);
  const dv = new DataView(buf);
  const major = bytes[6];
  const hlen = major === 1 ? dv.getUint16(8, true) : dv.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder("latin1").decode(bytes.subarray(start, start + hlen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").map(s => s.trim()).filter(Boolean).map(Number);
  const off = start + hlen;
  const kind = descr.slice(1);
  const T = { u1: Uint8Array, i1: Int8Array, u2: Uint16Array, i2: Int16Array, u4: Uint32Array, i4: Int32Array, f4: Float32Array, f8: Float64Array }[kind];
  if (!T) throw new Error(`pixel type ${descr} is not supported`);
  const count = shape.reduce((a, b) => a * b, 1);
  const data = off % T.BYTES_PER_ELEMENT === 0 ? new T(buf, off, count) : new T(buf.slice(off), 0, count);
  return { shape, data };
}

async function fetchFrame(i) {
  if (cache.has(i)) return cache.get(i);
  if (pending.has(i)) return pending.get(i);
  const f = state.frames[i];
  const p = (async () => {
    const r = await fetch(`/instances/${f.id}/frames/${f.frame}/numpy`, { headers: PAGE });
    if (!r.ok) {   // the server's reason (no pixel data, a codec missing here) says more than a status
      let why = `${r.status} ${r.statusText}`;
      try { why = (await r.json()).Message || why; } catch (e) { /* keep the status */ }
      throw new Error(`Image ${i + 1} cannot be shown: ${why}`);
    }
    const { shape, data } = parseNpy(await r.arrayBuffer());
    const [, height, width, channels] = shape.length === 4 ? shape : [1, shape[0], shape[1], 1];
    let min = Infinity, max = -Infinity;
    if (channels === 1) for (let k = 0; k < data.length; k++) { const v = data[k]; if (v < min) min = v; if (v > max) max = v; }
    const img = { width, height, channels, data, min, max };
    cache.set(i, img);
    state.loaded = cache.size;
    if (cache.size > MAX_CACHED) {   // forget the frames farthest from where the teacher is
      let far = -1, dist = -1;
      for (const k of cache.keys()) if (Math.abs(k - state.index) > dist) { dist = Math.abs(k - state.index); far = k; }
      cache.delete(far);
    }
    return img;
  })();
  pending.set(i, p);
  try { return await p; } finally { pending.delete(i); }
}

async function prefetch() {
  // outward from the current image, four requests at a time
  const order = [];
  for (let d = 1; d < state.frames.length; d++) {
    if (state.index + d < state.frames.length) order.push(state.index + d);
    if (state.index - d >= 0) order.push(state.index - d);
  }
  const todo = order.filter(i => !cache.has(i)).slice(0, MAX_CACHED);
  let next = 0;
  const label = document.getElementById("loading");
  const worker = async () => {
    while (next < todo.length) {
      const i = todo[next++];
      try { await fetchFrame(i); } catch (e) { /* shown when the image is reached */ }
      label.textContent = cache.size < state.frames.length ? `loaded ${cache.size}/${state.frames.length}` : "";
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  label.textContent = "";
}

function defaultWindow(img, ds) {
  const wc = Number(first(ds, "00281050")), ww = Number(first(ds, "00281051"));
  if (Number.isFinite(wc) && Number.isFinite(ww) && ww > 0) return [wc, ww];
  const slope = Number(first(ds, "00281053", 1)) || 1, icpt = Number(first(ds, "00281052", 0)) || 0;
  const lo = img.min * slope + icpt, hi = img.max * slope + icpt;
  return [(lo + hi) / 2, Math.max(hi - lo, 1)];
}

const off = document.createElement("canvas");
const offCtx = off.getContext("2d");

function paint(img, f) {
  if (off.width !== img.width || off.height !== img.height) { off.width = img.width; off.height = img.height; }
  const out = offCtx.createImageData(img.width, img.height);
  const px = out.data, src = img.data, n = img.width * img.height;
  if (img.channels >= 3) {
    for (let k = 0, j = 0; k < n; k++, j += img.channels) {
      px[4 * k] = src[j]; px[4 * k + 1] = src[j + 1]; px[4 * k + 2] = src[j + 2]; px[4 * k + 3] = 255;
    }
  } else {
    const slope = Number(first(f.ds, "00281053", 1)) || 1, icpt = Number(first(f.ds, "00281052", 0)) || 0;
    const invert = first(f.ds, "00280004") === "MONOCHROME1";
    const lo = state.wc - state.ww / 2, scale = 255 / Math.max(state.ww, 1e-6);
    // a look-up table over the stored values of this frame: one multiply per distinct value, not per pixel
    const span = img.max - img.min;
    const lut = new Uint8ClampedArray(Math.min(span + 1, 1 << 20));
    const exact = span + 1 <= lut.length;
    for (let v = 0; v < lut.length; v++) {
      const stored = exact ? img.min + v : img.min + v * (span / (lut.length - 1));
      const g = (stored * slope + icpt - lo) * scale;
      lut[v] = invert ? 255 - g : g;
    }
    const step = exact ? 1 : (lut.length - 1) / span;
    for (let k = 0; k < n; k++) {
      const g = lut[exact ? src[k] - img.min : Math.round((src[k] - img.min) * step)];
      px[4 * k] = g; px[4 * k + 1] = g; px[4 * k + 2] = g; px[4 * k + 3] = 255;
    }
  }
  offCtx.putImageData(out, 0, 0);
}

function draw() {
  const img = cache.get(state.index);
  const W = canvas.width, H = canvas.height;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, W, H);
  if (!img) return;
  const fit = Math.min(W / img.width, H / img.height);
  const s = fit * state.zoom;
  if (state.pendingCenter) {   // a key image's centre (image pixels), now that the frame's size and the scale are known
    const [cx, cy] = state.pendingCenter;
    state.pendingCenter = null;
    state.panX = (img.width / 2 - Math.min(Math.max(cx, 0), img.width)) * s;
    state.panY = (img.height / 2 - Math.min(Math.max(cy, 0), img.height)) * s;
  }
  ctx.imageSmoothingEnabled = s < 4;
  ctx.setTransform(s, 0, 0, s, W / 2 + state.panX - (img.width * s) / 2, H / 2 + state.panY - (img.height * s) / 2);
  ctx.drawImage(off, 0, 0);
  state.drawn++;
  state.map = { scale: s, ox: W / 2 + state.panX - (img.width * s) / 2, oy: H / 2 + state.panY - (img.height * s) / 2,
    width: img.width, height: img.height };
  drawCaseLayer();
  overlay(img);
}

let paintedKey = null;
async function show(i) {
  const want = Math.min(Math.max(i, 0), state.frames.length - 1);
  state.index = want;
  slider.value = String(want);
  const f = state.frames[want];
  let img;
  try { img = await fetchFrame(want); } catch (e) { showError(e.message); return; }
  if (want !== state.index) return;   // the teacher scrolled on meanwhile
  if (state.wc === null) [state.wc, state.ww] = defaultWindow(img, f.ds);
  const key = `${state.index}/${state.wc}/${state.ww}`;
  if (key !== paintedKey) { paint(img, f); paintedKey = key; }
  draw();
  remember();
  updateCaseBar();
}

function overlay(img) {
  const f = state.frames[state.index];
  const st = state.study.MainDicomTags, se = state.series.MainDicomTags;
  const who = state.anonymized ? `${(state.study.PatientMainDicomTags.PatientName || "").replace(/\^/g, " ")}\n` : "";
  document.getElementById("ov-tl").textContent = `${who}${st.StudyDescription || ""}\n${se.SeriesDescription || ""}`;
  document.getElementById("ov-tr").textContent =
    `Im ${state.index + 1} / ${state.frames.length}` + (f.frames > 1 ? `\nFrame ${f.frame + 1} / ${f.frames}` : "") +
    (f.pos !== null && f.frames === 1 ? `\nPos ${f.pos.toFixed(1)} mm` : "");
  document.getElementById("ov-bl").textContent = img.channels >= 3 ? `${img.width}×${img.height}` :
    `W ${Math.round(state.ww)}  L ${Math.round(state.wc)}\n${img.width}×${img.height}`;
  const k = currentKeyIndex();
  document.getElementById("ov-br").textContent = (k >= 0 ? `Key image ${k + 1} of ${state.case.KeyImages.length}\n` : "") +
    `Zoom ${Math.round(state.zoom * 100)}%`;
  const iop = f.iop;
  const set = (id, t) => { document.getElementById(id).textContent = t; };
  if (iop && iop.length === 6) {
    const row = iop.slice(0, 3), col = iop.slice(3);
    set("or-right", orientationLetter(row)); set("or-left", orientationLetter(row.map(x => -x)));
    set("or-bottom", orientationLetter(col)); set("or-top", orientationLetter(col.map(x => -x)));
  } else { for (const id of ["or-right", "or-left", "or-bottom", "or-top"]) set(id, ""); }
}

let rememberTimer = null;
function remember() {
  clearTimeout(rememberTimer);
  rememberTimer = setTimeout(() => {
    const h = `#i=${state.index}&wc=${Math.round(state.wc)}&ww=${Math.round(state.ww)}`;
    history.replaceState(null, "", h);   // a shareable address for the projector
  }, 250);
}

function showError(text) {
  const box = document.getElementById("error");
  box.hidden = false;
  box.replaceChildren(document.createTextNode(text + " "), Object.assign(document.createElement("a"), { href: "/", textContent: "Back to the explorer" }));
}

// ------------------------------------------------------------------ interaction

function resize() {
  const r = stage.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(r.width * dpr));
  canvas.height = Math.max(1, Math.round(r.height * dpr));
  draw();
}
window.addEventListener("resize", resize);

function setWindow(wc, ww) {
  state.wc = wc; state.ww = Math.max(1, ww);
  show(state.index);
}
function preset(name) {
  if (name === "default") {
    const img = cache.get(state.index);
    if (img) setWindow(...defaultWindow(img, state.frames[state.index].ds));
  } else setWindow(...PRESETS[name]);
}
function reset() {
  state.zoom = 1; state.panX = 0; state.panY = 0; state.pendingCenter = null;
  preset("default");
}
function step(d) { if (state.ready) show(state.index + d); }

function setTool(t) {
  state.tool = t;
  for (const b of document.querySelectorAll("[data-tool]")) b.setAttribute("aria-pressed", b.dataset.tool === t ? "true" : "false");
}
for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
for (const b of document.querySelectorAll("[data-preset]")) b.addEventListener("click", () => preset(b.dataset.preset));
document.getElementById("reset").addEventListener("click", reset);
slider.addEventListener("input", () => show(Number(slider.value)));

let timer = null;
const playBtn = document.getElementById("play");
playBtn.addEventListener("click", () => {
  state.playing = !state.playing;
  playBtn.setAttribute("aria-pressed", String(state.playing));
  playBtn.textContent = state.playing ? "Pause" : "Play";
  clearInterval(timer);
  if (state.playing) timer = setInterval(() => show((state.index + 1) % state.frames.length), Math.max(state.frameTime, 33));
});

stage.addEventListener("wheel", (e) => { e.preventDefault(); step(e.deltaY > 0 ? 1 : -1); }, { passive: false });

const pointers = new Map();
let gesture = null;
stage.addEventListener("pointerdown", (e) => {
  stage.setPointerCapture(e.pointerId);
  pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
  gesture = startGesture();
});
stage.addEventListener("pointermove", (e) => {
  if (!pointers.has(e.pointerId)) return;
  pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
  if (gesture) moveGesture(gesture);
});
const endPointer = (e) => {
  if (gesture && gesture.kind === "annotate" && pointers.size === 1 && e.type === "pointerup") finishAnnotate(gesture);
  pointers.delete(e.pointerId);
  gesture = pointers.size ? startGesture() : null;
  if (gesture && gesture.kind === "annotate") gesture.stale = true;   // the finger left of a pinch: no tap
};
stage.addEventListener("pointerup", endPointer);
stage.addEventListener("pointercancel", endPointer);
// a double tap (two short taps of one finger that barely moved) resets the view
let lastTap = 0, tapStart = null;
stage.addEventListener("pointerdown", (e) => {
  tapStart = pointers.size === 0 ? { x: e.clientX, y: e.clientY, t: performance.now() } : null;   // runs before the gesture handler adds this pointer
}, true);
stage.addEventListener("pointerup", (e) => {
  if (e.pointerType !== "touch" || !tapStart) return;
  const now = performance.now();
  const isTap = now - tapStart.t < 250 && Math.hypot(e.clientX - tapStart.x, e.clientY - tapStart.y) < 10;
  tapStart = null;
  if (!isTap) return;
  if (ANNOTATION_TOOLS.has(state.tool)) return;   // taps select and place labels there
  if (now - lastTap < 350) { reset(); lastTap = 0; } else lastTap = now;
});

function startGesture() {
  const pts = [...pointers.values()];
  if (pts.length >= 2) {
    const [a, b] = pts;
    return { kind: "pinch", dist: Math.hypot(a.x - b.x, a.y - b.y), mid: { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 },
      zoom: state.zoom, panX: state.panX, panY: state.panY };
  }
  const p = pts[0];
  if (ANNOTATION_TOOLS.has(state.tool) && state.editing) return startAnnotate(p);
  return { kind: state.tool, x: p.x, y: p.y, index: state.index, wc: state.wc, ww: state.ww, panX: state.panX, panY: state.panY };
}

function moveGesture(g) {
  const pts = [...pointers.values()];
  const dpr = window.devicePixelRatio || 1;
  if (g.kind === "pinch" && pts.length >= 2) {
    const [a, b] = pts;
    const dist = Math.hypot(a.x - b.x, a.y - b.y);
    state.zoom = Math.min(Math.max(g.zoom * dist / Math.max(g.dist, 1), 0.25), 20);
    state.panX = g.panX + ((a.x + b.x) / 2 - g.mid.x) * dpr;
    state.panY = g.panY + ((a.y + b.y) / 2 - g.mid.y) * dpr;
    draw();
    return;
  }
  const p = pts[0];
  const dx = p.x - g.x, dy = p.y - g.y;
  if (g.kind === "scroll") {
    const target = g.index + Math.round(dy / 8);
    if (target !== state.index) show(target);
  } else if (g.kind === "window") {
    const sens = Math.max(g.ww, 10) / 300;
    setWindow(g.wc - dy * sens, g.ww + dx * sens * 2);
  } else if (g.kind === "pan") {
    state.panX = g.panX + dx * dpr; state.panY = g.panY + dy * dpr; draw();
  } else if (g.kind === "annotate") {
    moveAnnotate(g, p);
  }
}

stage.addEventListener("keydown", (e) => {
  const k = e.key;
  if (k === "ArrowDown" || k === "ArrowRight" || k === "PageDown") step(1);
  else if (k === "ArrowUp" || k === "ArrowLeft" || k === "PageUp") step(-1);
  else if (k === "Home") show(0);
  else if (k === "End") show(state.frames.length - 1);
  else if (k === "+" || k === "=") { state.zoom = Math.min(state.zoom * 1.25, 20); draw(); }
  else if (k === "-") { state.zoom = Math.max(state.zoom / 1.25, 0.25); draw(); }
  else if (k === "0") reset();
  else if (k === " ") playBtn.click();
  else if (/^[1-6]$/.test(k)) preset(PRESET_KEYS[Number(k) - 1]);
  else if (k === "w") setTool("window");
  else if (k === "s") setTool("scroll");
  else if (k === "p") setTool("pan");
  else if ((k === "Delete" || k === "Backspace") && state.editing && state.selected >= 0) deleteSelected();
  else if (k === "z" && (e.metaKey || e.ctrlKey) && state.editing) undo();
  else return;
  e.preventDefault();
});

// ------------------------------------------------------------------ a teaching case

const ANNOTATION_TOOLS = new Set(["arrow", "ellipse", "text", "length"]);
const UNDO_STEPS = 50;        // annotation changes the Undo button can take back (the newest kept)
const SAVE_ATTEMPTS = 4;      // PUTs refused as "the case changed" before the viewer gives up and says so

async function caseRequest(method, url, body) {
  const headers = { ...PAGE, "Content-Type": "application/json" };
  if (SESSION && SESSION.CSRF) headers["X-Pipacs-CSRF"] = SESSION.CSRF;
  const r = await fetch(url, { method, headers, body: JSON.stringify(body) });
  let j = null;
  try { j = await r.json(); } catch (e) { /* no JSON */ }
  if (!r.ok) { const err = new Error((j && (j.Message || j.Details)) || r.statusText); err.status = r.status; throw err; }
  return j;
}

const keyOf = (k) => `${k.Instance}/${k.Frame || 1}`;
const clone = (x) => JSON.parse(JSON.stringify(x));
const clamp = (v, lo, hi) => Math.min(Math.max(v, lo), hi);
// a student who has not revealed an unknown case yet sees no label text (the shapes stay)
const revealKey = (id) => `pipacs-revealed:${id}`;
function textHidden() {
  if (!state.case || !state.case.Unknown || state.editing) return false;
  try { return sessionStorage.getItem(revealKey(state.case.ID)) !== "1"; } catch (e) { return true; }
}

// The case this viewer was opened for: its key images drawn for everyone, editable by the teacher.
async function loadCase() {
  try {
    SESSION = SESSION || await getJson("/pipacs/session");
    state.case = await getJson(`/cases/${encodeURIComponent(state.caseId)}`);
  } catch (e) {
    showError(e.status === 404 ? "This case does not exist any more (or is not published)." : `Cannot open the case: ${e.message}`);
    return false;
  }
  state.case.KeyImages = state.case.KeyImages || [];
  state.base = clone(state.case.KeyImages);   // the key images as the board held them when last read or saved
  state.editing = SESSION.Role === "teacher";
  const link = document.getElementById("case-link");
  link.hidden = false;
  link.href = `/#/case/${encodeURIComponent(state.case.ID)}`;
  link.textContent = `Case: ${textHidden() ? "Unknown case" : state.case.Title || "(untitled)"}`;
  document.getElementById("back").href = link.href;
  document.getElementById("case-nav").hidden = false;
  document.getElementById("case-edit").hidden = !state.editing;
  return true;
}

// A key image's view: its window, zoom and centre (image pixels; null: the frame's centre), shown
// once its frame is drawn (the centre needs the frame's size and the scale).
function applyKeyView(k) {
  if (!k) return;
  if (k.Window && k.Window.Width > 0) { state.wc = k.Window.Center; state.ww = k.Window.Width; }
  state.zoom = typeof k.Zoom === "number" ? clamp(k.Zoom, 0.25, 20) : 1;
  state.panX = 0; state.panY = 0;
  state.pendingCenter = Array.isArray(k.Center) && k.Center.length === 2 ? k.Center.map(Number) : null;
}

// The image pixel drawn at the middle of the canvas (within the frame), or null when not panned.
function viewCenter() {
  const m = state.map;
  if (!m || (Math.abs(state.panX) < 0.5 && Math.abs(state.panY) < 0.5)) return null;
  const x = (canvas.width / 2 - m.ox) / m.scale, y = (canvas.height / 2 - m.oy) / m.scale;
  return [Math.round(clamp(x, 0, m.width) * 100) / 100, Math.round(clamp(y, 0, m.height) * 100) / 100];
}

// What is on screen now becomes the key image's view (the slide and the workstation show that).
function recordView(k) {
  const img = cache.get(state.index);
  k.Window = (img && img.channels >= 3) || state.ww === null ? null : { Center: state.wc, Width: Math.max(state.ww, 1) };
  k.Zoom = clamp(state.zoom, 0.1, 20);
  k.Center = viewCenter();
}

// Opened from a key image (?instance=...&frame=...): that image, with the view it was marked with.
function openAtKeyImage() {
  const q = new URLSearchParams(location.search);
  const inst = q.get("instance");
  if (!inst) return;
  const frame = Math.max(Number(q.get("frame")) || 1, 1);
  const i = state.frames.findIndex(f => f.id === inst && f.frame + 1 === frame);
  if (i < 0) return;
  state.index = i;
  applyKeyView(state.case.KeyImages.find(x => x.Instance === inst && (x.Frame || 1) === frame));
}

function currentKeyIndex() {
  if (!state.case || !state.frames.length) return -1;
  const f = state.frames[state.index];
  return state.case.KeyImages.findIndex(k => k.Instance === f.id && (k.Frame || 1) === f.frame + 1);
}
function currentKey() { const k = currentKeyIndex(); return k >= 0 ? state.case.KeyImages[k] : null; }
function hereId() { const f = state.frames[state.index]; return `${f.id}/${f.frame + 1}`; }

function spacingHere() {
  const ds = state.frames[state.index].ds;
  return Annot.spacingOf(tagValue(ds, "00280030"), tagValue(ds, "00181164"));
}

function drawCaseLayer() {
  if (!state.case || !state.map) return;
  const k = currentKey();
  const dpr = window.devicePixelRatio || 1;
  let anns = k ? [...(k.Annotations || [])] : [];
  state.labelsHidden = textHidden();
  if (state.labelsHidden) anns = anns.map(a => (a.Type === "text" ? { ...a, Text: "" } : a));
  const draft = gesture && gesture.kind === "annotate" && gesture.draft;
  if (draft) anns.push(draft);
  Annot.drawAll(ctx, anns, state.map, { unit: dpr, selected: state.selected, spacing: spacingHere() });
  state.annotationsDrawn = k ? (k.Annotations || []).length : 0;
}

function updateCaseBar() {
  if (!state.case) return;
  const k = currentKeyIndex();
  const here = state.frames[state.index];
  const keysHere = state.case.KeyImages.map(x => state.frames.findIndex(f => f.id === x.Instance && f.frame + 1 === (x.Frame || 1)))
    .filter(i => i >= 0);
  document.getElementById("key-prev").disabled = !keysHere.some(i => i < state.index);
  document.getElementById("key-next").disabled = !keysHere.some(i => i > state.index);
  const btn = document.getElementById("key-image");
  btn.setAttribute("aria-pressed", k >= 0 ? "true" : "false");
  btn.textContent = k >= 0 ? "Key image ✓" : "Key image";
  if (k < 0 || state.selected >= (state.case.KeyImages[k].Annotations || []).length) state.selected = -1;
  document.getElementById("annot-delete").disabled = state.selected < 0;
  document.getElementById("annot-undo").disabled = !undoStack.length;
  btn.title = here ? `Image ${state.index + 1}` : "";
}

function jumpKey(dir) {
  const idx = state.case.KeyImages.map(x => state.frames.findIndex(f => f.id === x.Instance && f.frame + 1 === (x.Frame || 1)))
    .filter(i => (dir > 0 ? i > state.index : i >= 0 && i < state.index)).sort((a, b) => a - b);
  if (!idx.length) return;
  const i = dir > 0 ? idx[0] : idx[idx.length - 1];
  state.selected = -1;
  const f = state.frames[i];
  applyKeyView(state.case.KeyImages.find(x => x.Instance === f.id && (x.Frame || 1) === f.frame + 1));
  show(i);
}
document.getElementById("key-prev").addEventListener("click", () => jumpKey(-1));
document.getElementById("key-next").addEventListener("click", () => jumpKey(1));

// Undo: each change is to one key image (this frame's); the stack keeps that key image as it was
// before, so an undo puts it back (or takes it away) whatever was merged in from elsewhere meanwhile.
const undoStack = [];
function record(id, before) {
  const index = state.case.KeyImages.findIndex(k => keyOf(k) === id);
  undoStack.push({ id, before: before ? clone(before) : null, index: index >= 0 ? index : state.case.KeyImages.length });
  if (undoStack.length > UNDO_STEPS) undoStack.shift();
}
function undo() {
  const u = undoStack.pop();
  if (!u || !state.editing) return;
  const list = state.case.KeyImages;
  const i = list.findIndex(k => keyOf(k) === u.id);
  if (u.before === null) { if (i >= 0) list.splice(i, 1); }
  else if (i >= 0) list[i] = clone(u.before);
  else list.splice(Math.min(u.index, list.length), 0, clone(u.before));
  state.selected = -1;
  changed();
  const at = state.frames.findIndex(f => `${f.id}/${f.frame + 1}` === u.id);   // show what was undone
  if (at >= 0 && at !== state.index) show(at);
}
document.getElementById("annot-undo").addEventListener("click", undo);

// The current image as a key image, with the view on screen now.
function addKeyHere() {
  const f = state.frames[state.index];
  const key = { Instance: f.id, Frame: f.frame + 1, Window: null, Zoom: null, Center: null, Caption: "", Annotations: [] };
  recordView(key);
  state.case.KeyImages.push(key);
  return key;
}

function toggleKey() {
  if (!state.editing || !state.ready) return;
  const k = currentKeyIndex();
  if (k >= 0) {
    const n = (state.case.KeyImages[k].Annotations || []).length;
    if (n && !window.confirm(`This key image has ${n} annotation${n === 1 ? "" : "s"}. Remove it and them? (Undo brings them back.)`)) return;
    record(hereId(), state.case.KeyImages[k]);
    state.case.KeyImages.splice(k, 1);
    state.selected = -1;
  } else {
    if (state.case.KeyImages.length >= 500) { setStatus("A case holds at most 500 key images.", true); return; }
    record(hereId(), null);
    addKeyHere();
  }
  changed();
}
document.getElementById("key-image").addEventListener("click", toggleKey);
document.getElementById("annot-delete").addEventListener("click", () => deleteSelected());

function deleteSelected() {
  const k = currentKey();
  if (!k || state.selected < 0) return;
  record(keyOf(k), k);
  k.Annotations.splice(state.selected, 1);
  state.selected = -1;
  recordView(k);
  changed();
}

function toImage(p) {
  const r = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const m = state.map;
  return [((p.x - r.left) * dpr - m.ox) / m.scale, ((p.y - r.top) * dpr - m.oy) / m.scale];
}

function startAnnotate(p) {
  if (!state.map) return null;
  const g = { kind: "annotate", x: p.x, y: p.y, start: Annot.clampPoint(toImage(p), state.map.width, state.map.height), draft: null };
  // a finger put on the selected annotation moves it
  const k = currentKey();
  if (k && state.selected >= 0 && Annot.hit(k.Annotations, g.start, tolerance()) === state.selected) {
    g.move = { index: state.selected, points: k.Annotations[state.selected].Points.map(q => [...q]), moved: false, before: clone(k) };
  }
  return g;
}
function tolerance() { return (14 * (window.devicePixelRatio || 1)) / state.map.scale; }   // a fingertip, in image pixels

function moveAnnotate(g, p) {
  if (g.stale) return;
  if (g.move) {
    if (!g.move.moved && Math.hypot(p.x - g.x, p.y - g.y) < 8) return;
    const k = currentKey();
    const a = k && k.Annotations[g.move.index];
    if (!a) return;
    const [x, y] = toImage(p);
    const W = state.map.width, H = state.map.height, pts = g.move.points;
    // the whole shape moves, kept inside the image
    const dx = Math.min(Math.max(x - g.start[0], -Math.min(...pts.map(q => q[0]))), W - Math.max(...pts.map(q => q[0])));
    const dy = Math.min(Math.max(y - g.start[1], -Math.min(...pts.map(q => q[1]))), H - Math.max(...pts.map(q => q[1])));
    a.Points = pts.map(([qx, qy]) => [qx + dx, qy + dy]);
    delete a.LengthMm; delete a.LengthNote;   // ours until the board answers
    g.move.moved = true;
    draw();
    return;
  }
  if (state.tool === "text") return;
  if (!g.draft && Math.hypot(p.x - g.x, p.y - g.y) < 8) return;   // not a drag yet: maybe a tap
  g.draft = { Type: state.tool, Points: [g.start, Annot.clampPoint(toImage(p), state.map.width, state.map.height)], Text: "" };
  draw();
}

// A drag draws the shape; a tap selects what is under the finger, or places a text label.
function finishAnnotate(g) {
  if (g.stale) return;   // the finger left on the glass after a pinch: neither a tap nor a drag
  if (g.move && g.move.moved) {
    const k = currentKey();
    if (k) { record(keyOf(k), g.move.before); recordView(k); }
    changed();
    return;
  }
  let k = currentKey();
  if (g.draft) {
    const a = g.draft;
    g.draft = null;
    if (k && (k.Annotations || []).length >= Annot.MAX_PER_IMAGE) { setStatus(`At most ${Annot.MAX_PER_IMAGE} annotations on one image.`, true); draw(); return; }
    record(hereId(), k);
    if (!k) k = addKeyHere();
    if (!k.Annotations) k.Annotations = [];
    k.Annotations.push(a);
    recordView(k);
    state.selected = k.Annotations.length - 1;
    changed();
    return;
  }
  const hitIndex = k ? Annot.hit(k.Annotations, g.start, tolerance()) : -1;
  if (hitIndex >= 0) {
    const a = k.Annotations[hitIndex];
    if (hitIndex === state.selected && a.Type === "text") {   // a second tap on a selected label edits it
      const id = keyOf(k), index = state.index;
      askText(a.Text || "", (t) => {
        const key = currentKey();   // looked up again: a save meanwhile makes new objects
        if (state.index !== index || !key || keyOf(key) !== id || !key.Annotations[hitIndex]) return;
        record(id, key);
        key.Annotations[hitIndex].Text = t;
        changed();
      });
    }
    state.selected = hitIndex;
  } else if (state.tool === "text") {
    const at = g.start, index = state.index;
    askText("", (t) => {
      if (state.index !== index) return;   // scrolled away meanwhile
      let key = currentKey();
      if (key && (key.Annotations || []).length >= Annot.MAX_PER_IMAGE) { setStatus(`At most ${Annot.MAX_PER_IMAGE} annotations on one image.`, true); return; }
      record(hereId(), key);
      if (!key) key = addKeyHere();
      if (!key.Annotations) key.Annotations = [];
      key.Annotations.push({ Type: "text", Points: [at], Text: t });
      recordView(key);
      state.selected = key.Annotations.length - 1;
      changed();
    });
  } else state.selected = -1;
  updateCaseBar();
  draw();
}

// A label's words, typed in the page's own box (focused inside the touch, so an iPad shows its keyboard).
const labelForm = document.getElementById("label-form");
const labelText = document.getElementById("label-text");
let labelDone = null, labelOpening = false;
function askText(initial, done) {
  labelDone = done;
  labelText.value = initial;
  labelForm.hidden = false;
  labelOpening = true;
  labelText.focus();
  labelText.select();
}
// the tap that opened the box ends after it: its touchend would become a click that gives the
// stage the focus (and an iPad would drop its keyboard), so that one is kept to the box
stage.addEventListener("touchend", (e) => {
  if (!labelOpening) return;
  labelOpening = false;
  e.preventDefault();
  labelText.focus();
}, { passive: false });
stage.addEventListener("pointerdown", () => { labelOpening = false; }, true);
function closeLabel() {
  labelForm.hidden = true;
  labelDone = null;
  stage.focus({ preventScroll: true });
}
labelForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const t = labelText.value.trim().slice(0, 1000), done = labelDone;
  closeLabel();
  if (t && done) done(t);
});
document.getElementById("label-cancel").addEventListener("click", closeLabel);
labelText.addEventListener("keydown", (e) => { if (e.key === "Escape") { e.preventDefault(); closeLabel(); } });

// What changed from the key images `from` to `to`, applied onto `onto` (another copy of the case's
// list): key images added, removed, and the fields of a key image changed; all else as in `onto`.
const KEY_FIELDS = ["Window", "Zoom", "Center", "Caption", "Annotations"];
function rebase(from, to, onto) {
  const fromBy = new Map(from.map(k => [keyOf(k), k])), toBy = new Map(to.map(k => [keyOf(k), k]));
  const ontoIds = new Set(onto.map(keyOf));
  const saving = (k) => Annot.keyImageForSaving(k);
  const changedFields = (was, now) => {
    const a = saving(was), b = saving(now);
    return KEY_FIELDS.filter(f => JSON.stringify(a[f]) !== JSON.stringify(b[f]));
  };
  const out = [];
  for (const k of onto) {
    const id = keyOf(k), was = fromBy.get(id), now = toBy.get(id);
    if (was && !now) continue;                       // removed here
    if (!was && now) { out.push(clone(now)); continue; }   // added here and there: ours
    if (!was) { out.push(clone(k)); continue; }      // added elsewhere
    const merged = clone(k);
    for (const f of changedFields(was, now)) merged[f] = clone(now[f] ?? null);
    out.push(merged);
  }
  for (const now of to) {
    const id = keyOf(now);
    if (ontoIds.has(id)) continue;
    const was = fromBy.get(id);
    if (!was || changedFields(was, now).length) out.push(clone(now));   // ours, or removed elsewhere after we changed it
  }
  return out;
}

// Every change is saved at once: PUT /cases/{id} with the key images and the "Updated" read. When
// the case changed meanwhile (another tab, the case page, a workstation's key object: 409), the
// case is read again and this viewer's own changes are applied onto its key images, then saved.
let changes = 0, saveTimer = null, saving = false, dirty = false;
function changed() {
  changes++;
  dirty = true;
  updateCaseBar();
  draw();
  setStatus("Unsaved changes");
  clearTimeout(saveTimer);
  saveTimer = setTimeout(save, 400);
}
async function save() {
  if (saving) { saveTimer = setTimeout(save, 200); return; }
  saving = true;
  const at = changes;
  const url = `/cases/${encodeURIComponent(state.case.ID)}`;
  const sent = clone(state.case.KeyImages);
  setStatus("Saving…");
  try {
    let onto = state.base, updated = state.case.Updated, doc = null, merged = 0;
    for (let attempt = 1; ; attempt++) {
      const keys = rebase(state.base, sent, onto).map(Annot.keyImageForSaving);
      try {
        doc = await caseRequest("PUT", url, { Updated: updated, KeyImages: keys });
        break;
      } catch (e) {
        if (e.status !== 409 || attempt >= SAVE_ATTEMPTS) throw e;
        const fresh = await getJson(url);
        onto = fresh.KeyImages || []; updated = fresh.Updated; merged++;
      }
    }
    // what the teacher did while this save was under way, onto what the board holds now
    const local = rebase(sent, state.case.KeyImages, doc.KeyImages || []);
    state.base = clone(doc.KeyImages || []);
    state.case = { ...doc, KeyImages: local };
    state.saved++;
    state.merged = (state.merged || 0) + (merged ? 1 : 0);
    if (changes === at) {
      dirty = false;
      setStatus(merged ? "Saved: the case had changed elsewhere meanwhile; those changes are kept beside yours" : "Saved");
    }
    updateCaseBar();
    draw();
  } catch (e) {
    setStatus(e.status === 409 ? "Not saved: the case keeps changing elsewhere; reload the viewer" : `Not saved: ${e.message}`, true);
  } finally { saving = false; }
}
function setStatus(text, bad) {
  const box = document.getElementById("case-status");
  box.textContent = text;
  box.classList.toggle("err", !!bad);
}
window.addEventListener("beforeunload", (e) => {
  if (dirty || saving) { e.preventDefault(); e.returnValue = ""; }
});

stage.focus();
load();
showWho();
