/* pipacs touch viewer: a series as a stack in one or two viewports (comparison, linked scrolling),
   window/level, zoom/pan, cine, a series switcher; opened for a teaching case (?case=ID), its key
   images with their annotations, and for the teacher the key-image and annotation tools (see the
   "teaching case" section). Tools of their own (measure.js, mpr.js) plug in through
   window.PipacsViewer (see "the hook API").
   One metadata request per series: the stack document (/pipacs/series/{id}/stack), whose order the
   board decides (OHIF's: by position along the slice normal, the most superior slice first, else by
   Instance Number, with a notice saying why). Pixels come through PipacsPixels.fetchFrame (pixels.js);
   windowing, zoom and drawing happen here in the browser. */
"use strict";

const PATH_ID = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const QUERY = new URLSearchParams(location.search);
// /viewer/live?session=ID: a teaching session's page (live.js): no series until its channel names one
const LIVE = PATH_ID === "live" && !!QUERY.get("session");
const stage = document.getElementById("stage");      // viewport 1's stage (the case's series)
const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const stagesEl = document.getElementById("stages");
const slider = document.getElementById("slider");
const PRESETS = { lung: [-600, 1500], mediastinum: [50, 350], bone: [400, 1800], brain: [40, 80], abdomen: [40, 400] };
const PRESET_KEYS = ["default", "lung", "mediastinum", "bone", "brain", "abdomen"];
const MAX_CACHED = 400;       // decoded frames kept per viewport (the farthest from the shown one go first)
const MAX_CACHED_BYTES = 160 * 2 ** 20;   // and at most this much of them (two viewports on an iPad: 320 MiB)
const PREFETCH = 6;           // frame requests at once per viewport, from the shown one outwards
const CINE_MS = 100;          // cine: one frame per 100 ms, unless the stack says its Frame Time
const CINE_MIN_MS = 33;       // and never faster than 30 frames a second (an iPad paints no faster)
const FEW_IMAGES = 4;         // the study list's View passes by series of at most this many images (scouts)
// series descriptions of a localizer (scout, topogram, surview...), passed by when the study list's View chooses
const LOCALIZER_WORDS = /\b(scout|topogram|localizer|localiser|locator|surview|scanogram|survey|pilot|tri-?pilot)\b/i;
// series that hold no image to stack (the study list's View skips them)
const NON_IMAGE = new Set(["SR", "PR", "KO", "RTPLAN", "RTSTRUCT", "RTRECORD", "REG", "DOC", "AU", "FID", "PLAN"]);

const state = {
  tool: "scroll", playing: false, ready: false, linked: true, linkMode: null,
  // a teaching case: its document, whether we may edit it, the selected annotation, what was drawn
  caseId: QUERY.get("case"), case: null, editing: false, selected: -1,
  annotationsDrawn: 0, saved: 0, base: [], pendingCenter: null, merged: 0,
};
window.viewerState = state;   // viewport 1 (and the page's state): read by the browser tests, handy when debugging
const viewports = [];         // the shown viewports; viewports[0] is `state`
let activeVp = state;

// ------------------------------------------------------------------ small helpers

// our pages' requests: a refusal then brings no browser login dialog (the explorer has the sign-in form)
const PAGE = { "X-Requested-With": "pipacs" };
const clamp = (v, lo, hi) => Math.min(Math.max(v, lo), hi);
const num = (v) => (v === null || v === undefined || v === "" || !Number.isFinite(Number(v)) ? null : Number(v));

function h(tag, props, ...children) {   // text always as text nodes
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(typeof c === "string" ? document.createTextNode(c) : c);
  return e;
}

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

async function getJson(url, signal) {
  const r = await fetch(url, { headers: { Accept: "application/json, application/dicom+json", ...PAGE }, signal });
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

function normalOf(iop) {   // the slice normal, cross(row, column) of Image Orientation (Patient)
  if (!Array.isArray(iop) || iop.length !== 6) return null;
  const v = iop.map(Number);
  return [v[1] * v[5] - v[2] * v[4], v[2] * v[3] - v[0] * v[5], v[0] * v[4] - v[1] * v[3]];
}
const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];

// ------------------------------------------------------------------ viewports

// A viewport: its stage (canvas, overlay corners, orientation letters, notice line, a frame's error),
// its stack (the stack document or a computed one), the shown frame, its own window and zoom, and its
// decoded frames. The hook API hands these to the tools.
function makeViewport(root, into) {
  const q = (cls) => root.querySelector(`.${cls}`);
  const c = root.querySelector("canvas"), off = document.createElement("canvas");
  return Object.assign(into || {}, {
    root, canvas: c, ctx: c.getContext("2d"), off, offCtx: off.getContext("2d"),
    ov: { tl: q("tl"), tr: q("tr"), bl: q("bl"), br: q("br"), notice: q("notice"), err: q("frame-error"),
      top: q("top"), bottom: q("bottom"), left: q("left"), right: q("right") },
    stack: null, frames: [], index: 0, wc: null, ww: null, zoom: 1, panX: 0, panY: 0, map: null,
    cache: new Map(), pending: new Map(), errors: new Map(), seriesId: null, computed: false,
    loaded: 0, drawn: 0, paintedKey: null, pendingCenter: null, prefetching: false, generation: 0, abort: new AbortController(), pointers: new Map(),
    frame() { return this.frames.length ? this.frames[this.index].meta : null; },
    image() { return (this.frames.length && this.cache.get(this.index)) || null; },
    redraw() { draw(this); },
  });
}

// the second viewport's stage: a copy of the first's, without its ids
function newStage() {
  const root = stage.cloneNode(true);
  for (const e of [root, ...root.querySelectorAll("[id]")]) e.removeAttribute("id");
  root.classList.remove("active");
  root.setAttribute("aria-label", "Comparison image. Arrow keys: previous or next image");
  return root;
}

// A stack (the stack document, or a computed one) becomes what the viewport shows.
function setStack(vp, stack, seriesId) {
  for (const t of tools.values()) if (t.clear) safely(() => t.clear(vp));
  vp.generation++;
  vp.abort.abort();
  vp.abort = new AbortController();
  vp.stack = stack; vp.seriesId = seriesId; vp.computed = !seriesId;
  vp.frames = (stack.Frames || []).map(fr => ({ id: fr.Instance, frame: fr.Frame || 0, frames: fr.NumberOfFrames || 1,
    pos: num(fr.Position), number: num(fr.InstanceNumber), iop: fr.ImageOrientationPatient, meta: fr }));
  vp.cache = new Map(); vp.pending = new Map(); vp.errors = new Map(); vp.cacheBytes = 0; vp.full = false;
  vp.index = 0; vp.loaded = 0; vp.wc = null; vp.ww = null; vp.zoom = 1; vp.panX = 0; vp.panY = 0;
  vp.paintedKey = null; vp.map = null;
  vp.pendingCenter = null;
}

function stackTitle(vp) {
  const s = vp.stack;
  if (!s) return "";
  if (vp.computed) return s.Title || "Computed stack";
  return `${s.Modality || ""} ${s.SeriesDescription || ""} · ${s.StudyDescription || ""}`.trim();
}

function setActive(vp) {
  if (!viewports.includes(vp)) return;
  activeVp = vp;
  for (const v of viewports) v.root.classList.toggle("active", v === vp && viewports.length > 1);
  slider.max = String(Math.max(vp.frames.length - 1, 0));
  slider.value = String(vp.index);
  document.getElementById("title").textContent = stackTitle(vp) || "Loading…";
  markSeries();
}

// The series `id` in viewport vp: its stack document, then the frame asked for (or the one matching
// the other viewport's when linked), then the others from there outwards.
async function openSeries(vp, id, opts = {}) {
  const gen = ++vp.generation;
  vp.abort.abort();
  let stack;
  try { stack = await getJson(`/pipacs/series/${encodeURIComponent(id)}/stack`); } catch (e) {
    if (gen !== vp.generation) return false;
    vp.ov.err.hidden = false;
    vp.ov.err.textContent = e.status === 404 ? "This series does not exist any more (it may have been deleted)."
      : `Cannot open the series: ${e.message}`;
    return false;
  }
  if (gen !== vp.generation) return false;
  if (opts.before && !(await opts.before(stack))) return false;
  setStack(vp, stack, id);
  const other = viewports.find(v => v !== vp && v.frames.length);
  let index = typeof opts.index === "function" ? opts.index(vp) : opts.index;
  if (index === undefined || index === null || index < 0) index = other && state.linked ? matchIndex(other, vp) : 0;
  vp.index = clamp(index, 0, Math.max(vp.frames.length - 1, 0));
  if (vp === state && LIVE) state.ready = true;   // the session's address stays (a reload rejoins)
  else if (vp === state) {
    state.ready = true;
    const search = state.caseId ? `?case=${encodeURIComponent(state.caseId)}` : "";
    const shownId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
    if (shownId !== id || QUERY.get("study")) history.replaceState(null, "", `/viewer/${encodeURIComponent(id)}${search}${location.hash}`);
    // back to where the viewer was opened from: the study list's View goes back to the study
    if (!state.case) document.getElementById("back").href = QUERY.get("study") && stack.Study ? `/#/study/${stack.Study}` : `/#/series/${id}`;
  }
  if (vp === activeVp) setActive(vp);
  if (!studySeries && stack.Study) loadStudySeries(stack.Study);
  markSeries();
  updateLink();
  resize();
  if (!vp.frames.length) {
    vp.ov.err.hidden = false;
    vp.ov.err.textContent = "This series cannot be shown: its instances have no pixel data." +
      ((stack.Notices || []).length ? ` ${stack.Notices.join(" ")}` : "");
    overlay(vp, null);
    return true;
  }
  await show(vp.index, vp, { sync: false });
  prefetch(vp);
  if (opts.byUser && vp.seriesId === id) viewChanged(vp);   // chosen by hand: now shown (a presenter sends it)
  return true;
}

// ------------------------------------------------------------------ pixels

const pixels = () => window.PipacsPixels;   // static/pixels.js: nothing here knows the wire format

function withRange(img) {   // the stored values' range: the look-up table's span and a default window
  if (img.min !== undefined) return img;
  let min = Infinity, max = -Infinity;
  const d = img.data;
  if (img.channels === 1) for (let k = 0; k < d.length; k++) { const v = d[k]; if (v < min) min = v; if (v > max) max = v; }
  if (min > max) { min = 0; max = 0; }
  return Object.assign(img, { min, max });
}

// a decoded frame kept; past the limits, the frames farthest from where the teacher is are forgotten
function remember1(vp, i, img) {
  vp.cache.set(i, img);
  vp.cacheBytes = (vp.cacheBytes || 0) + img.data.byteLength;
  while (vp.cache.size > 1 && (vp.cache.size > MAX_CACHED || vp.cacheBytes > MAX_CACHED_BYTES)) {
    let far = -1, dist = -1;
    for (const k of vp.cache.keys()) if (Math.abs(k - vp.index) > dist) { dist = Math.abs(k - vp.index); far = k; }
    vp.cacheBytes -= vp.cache.get(far).data.byteLength;
    vp.cache.delete(far);
    vp.full = true;   // prefetching more would only push out what it fetched
  }
  vp.loaded = vp.cache.size;
}

function fetchFrame(vp, i) {
  if (vp.cache.has(i)) return Promise.resolve(vp.cache.get(i));
  if (vp.pending.has(i)) return vp.pending.get(i);
  const f = vp.frames[i], cache = vp.cache, pending = vp.pending, signal = vp.abort.signal;
  const p = (async () => {
    let img;
    try { img = withRange(await pixels().fetchFrame(f.meta.Pixels, { signal })); } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new Error(`Image ${i + 1} cannot be shown: ${e.message}`);
    }
    if (cache !== vp.cache) return img;   // another stack meanwhile
    remember1(vp, i, img);
    return img;
  })();
  pending.set(i, p);
  p.then(() => pending.delete(i), () => pending.delete(i));
  return p;
}

// The frames around the shown one, nearest first (a frame that failed is not asked again). Picked
// afresh for each request, so a jump (the teacher's, in a teaching session) moves the prefetch with it;
// one prefetch per viewport at a time (a second call while it runs only resumes a finished one).
function nearestMissing(vp) {
  const n = vp.frames.length;
  for (let d = 1; d < n && d <= MAX_CACHED / 2; d++) {
    for (const i of [vp.index + d, vp.index - d]) {
      if (i >= 0 && i < n && !vp.cache.has(i) && !vp.pending.has(i) && !vp.errors.has(i)) return i;
    }
  }
  return -1;
}

async function prefetch(vp) {
  if (vp.prefetching === vp.generation) return;
  const gen = vp.prefetching = vp.generation, n = vp.frames.length;
  const label = document.getElementById("loading");
  const worker = async () => {
    while (gen === vp.generation && !vp.full) {
      const i = nearestMissing(vp);
      if (i < 0) break;
      try { await fetchFrame(vp, i); } catch (e) {
        if (e.name === "AbortError") break;
        if (gen === vp.generation) vp.errors.set(i, e.message);   // shown on that frame only
      }
      if (vp === activeVp && gen === vp.generation) label.textContent = vp.cache.size < n ? `loaded ${vp.cache.size}/${n}` : "";
    }
  };
  try { await Promise.all(Array.from({ length: PREFETCH }, worker)); } finally { if (vp.prefetching === gen) vp.prefetching = false; }
  if (vp === activeVp && gen === vp.generation) label.textContent = "";
}

function frameNumbers(meta) {
  const slope = num(meta.RescaleSlope) ?? 1, icpt = num(meta.RescaleIntercept) ?? 0;
  return { slope: slope || 1, icpt };
}

function defaultWindow(img, meta) {
  const wc = num(meta.WindowCenter), ww = num(meta.WindowWidth);
  if (wc !== null && ww !== null && ww > 0) return [wc, ww];
  const { slope, icpt } = frameNumbers(meta);
  const lo = img.min * slope + icpt, hi = img.max * slope + icpt;
  return [(lo + hi) / 2, Math.max(Math.abs(hi - lo), 1)];
}

function paint(vp, img, meta) {
  const off = vp.off, offCtx = vp.offCtx;
  if (off.width !== img.width || off.height !== img.height) { off.width = img.width; off.height = img.height; }
  const out = offCtx.createImageData(img.width, img.height);
  const px = out.data, src = img.data, n = img.width * img.height;
  if (img.channels >= 3) {
    for (let k = 0, j = 0; k < n; k++, j += img.channels) {
      px[4 * k] = src[j]; px[4 * k + 1] = src[j + 1]; px[4 * k + 2] = src[j + 2]; px[4 * k + 3] = 255;
    }
  } else {
    const { slope, icpt } = frameNumbers(meta);
    const invert = meta.PhotometricInterpretation === "MONOCHROME1";
    const lo = vp.wc - vp.ww / 2, scale = 255 / Math.max(vp.ww, 1e-6);
    // a look-up table over the stored values of this frame: one multiply per distinct value, not per pixel
    const span = img.max - img.min;
    const lut = new Uint8ClampedArray(Math.max(Math.min(Math.ceil(span) + 1, 1 << 20), 2));
    const exact = Number.isInteger(span) && span + 1 <= lut.length;
    for (let v = 0; v < lut.length; v++) {
      const stored = exact ? img.min + v : img.min + v * (span / (lut.length - 1));
      const g = (stored * slope + icpt - lo) * scale;
      lut[v] = invert ? 255 - g : g;
    }
    const step = exact || span === 0 ? 1 : (lut.length - 1) / span;
    for (let k = 0; k < n; k++) {
      const g = lut[exact ? src[k] - img.min : Math.round((src[k] - img.min) * step)];
      px[4 * k] = g; px[4 * k + 1] = g; px[4 * k + 2] = g; px[4 * k + 3] = 255;
    }
  }
  offCtx.putImageData(out, 0, 0);
}

// the shown frame painted (once per frame and window) into the viewport's off-screen canvas
function ensurePainted(vp, img) {
  const meta = vp.frames[vp.index].meta;
  if (vp.wc === null) [vp.wc, vp.ww] = defaultWindow(img, meta);
  const key = `${vp.generation}/${vp.index}/${vp.wc}/${vp.ww}`;
  if (key !== vp.paintedKey) { paint(vp, img, meta); vp.paintedKey = key; }
}

function safely(fn) {
  try { return fn(); } catch (e) { console.error(e); return undefined; }   // a tool's fault stays the tool's
}

function draw(vp = state) {
  const c = vp.canvas, g = vp.ctx, W = c.width, H = c.height;
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.fillStyle = "#000"; g.fillRect(0, 0, W, H);
  if (!vp.frames.length) return;
  const err = vp.errors.get(vp.index);
  vp.ov.err.hidden = !err;
  vp.ov.err.textContent = err || "";
  const img = err ? null : vp.cache.get(vp.index);
  if (!img) { overlay(vp, null); return; }
  ensurePainted(vp, img);
  const fit = Math.min(W / img.width, H / img.height);
  const s = fit * vp.zoom;
  if (vp.pendingCenter) {   // a key image's (or the teacher's) centre (image pixels), now that the frame's size and the scale are known
    const [cx, cy] = vp.pendingCenter;
    vp.pendingCenter = null;
    vp.panX = (img.width / 2 - clamp(cx, 0, img.width)) * s;
    vp.panY = (img.height / 2 - clamp(cy, 0, img.height)) * s;
  }
  const ox = W / 2 + vp.panX - (img.width * s) / 2, oy = H / 2 + vp.panY - (img.height * s) / 2;
  g.imageSmoothingEnabled = s < 4;
  g.setTransform(s, 0, 0, s, ox, oy);
  g.drawImage(vp.off, 0, 0);
  vp.drawn++;
  vp.map = { scale: s, ox, oy, width: img.width, height: img.height };
  if (vp === state) drawCaseLayer();
  for (const t of tools.values()) {
    if (!t.draw) continue;
    g.save();
    g.setTransform(s, 0, 0, s, ox, oy);   // 1 unit = 1 image pixel
    safely(() => t.draw(vp, g));
    g.restore();
  }
  overlay(vp, img);
  for (const fn of paintHooks) safely(() => fn(vp));
}

async function show(i, vp = state, opts = {}) {
  if (!vp.frames.length) return;
  const want = clamp(i, 0, vp.frames.length - 1);
  const moved = want !== vp.index;
  vp.index = want;
  if (vp === activeVp) slider.value = String(want);
  if (opts.sync !== false) syncOthers(vp);
  if (moved || opts.viewChanged) viewChanged(vp);
  const gen = vp.generation;
  let img;
  try { img = await fetchFrame(vp, want); vp.errors.delete(want); } catch (e) {
    if (e.name === "AbortError" || gen !== vp.generation) return;
    vp.errors.set(want, e.message);   // this frame's reason, on this frame only
    if (want === vp.index) { draw(vp); if (vp === state) { remember(); updateCaseBar(); } }
    return;
  }
  if (gen !== vp.generation || want !== vp.index) return;   // scrolled on meanwhile
  draw(vp);
  if (vp === state) { remember(); updateCaseBar(); }
}

function overlay(vp, img) {
  const s = vp.stack || {};
  const f = vp.frames[vp.index];
  const m = f ? f.meta : {};
  // the patient's name only on a de-identified study (its name is then a teaching alias), as main's viewer did
  const who = s.PatientIdentityRemoved && s.PatientName ? `${String(s.PatientName).replace(/\^/g, " ").trim()}\n` : "";
  vp.ov.tl.textContent = `${who}${s.StudyDescription || ""}\n${vp.computed ? s.Title || "" : s.SeriesDescription || ""}`;
  const lines = [];
  if (f) {
    lines.push(`Im ${vp.index + 1} / ${vp.frames.length}`);
    if (f.frames > 1) lines.push(`Frame ${f.frame + 1} / ${f.frames}`);
    if (f.number !== null) lines.push(`Instance ${f.number}`);
    const loc = num(m.SliceLocation);
    if (f.pos !== null) lines.push(`Pos ${f.pos.toFixed(1)} mm`);
    if (loc !== null && (f.pos === null || Math.abs(loc - f.pos) > 0.05)) lines.push(`Loc ${loc.toFixed(1)} mm`);
  }
  vp.ov.tr.textContent = lines.join("\n");
  vp.ov.bl.textContent = !img ? "" : img.channels >= 3 ? `${img.width}×${img.height}` :
    `W ${Math.round(vp.ww)}  L ${Math.round(vp.wc)}\n${img.width}×${img.height}`;
  const k = vp === state ? currentKeyIndex() : -1;
  vp.ov.br.textContent = (k >= 0 ? `Key image ${k + 1} of ${state.case.KeyImages.length}\n` : "") +
    (viewports.length > 1 && vp === viewports[1] && state.linkMode ? (state.linked ? `Linked by ${state.linkMode}\n` : "Not linked\n") : "") +
    `Zoom ${Math.round(vp.zoom * 100)}%`;
  vp.ov.notice.textContent = (s.Notices || []).join(" · ");
  vp.ov.notice.hidden = !(s.Notices || []).length;
  const iop = f && f.iop;
  if (iop && iop.length === 6) {
    const row = iop.slice(0, 3).map(Number), col = iop.slice(3).map(Number);
    vp.ov.right.textContent = orientationLetter(row); vp.ov.left.textContent = orientationLetter(row.map(x => -x));
    vp.ov.bottom.textContent = orientationLetter(col); vp.ov.top.textContent = orientationLetter(col.map(x => -x));
  } else for (const k2 of ["right", "left", "bottom", "top"]) vp.ov[k2].textContent = "";
}

let rememberTimer = null;
function remember() {
  if (state.computed || LIVE) return;   // a computed stack has no address
  clearTimeout(rememberTimer);
  rememberTimer = setTimeout(() => {
    const h2 = `#i=${state.index}&wc=${Math.round(state.wc)}&ww=${Math.round(state.ww)}`;
    history.replaceState(null, "", h2);   // a shareable address for the projector
  }, 250);
}

// The frame a deep link names: #in=<Instance Number> (the first frame of that instance), else #i=<index>.
function linkedIndex(vp, hash) {
  const q = new URLSearchParams(hash.replace(/^#/, ""));
  if (q.get("in") !== null && q.get("in") !== "") {
    const n = Number(q.get("in"));
    const k = vp.frames.findIndex(f => f.number === n);
    if (k >= 0) return k;
  }
  const i = Number(q.get("i"));
  return Number.isFinite(i) && i > 0 ? Math.floor(i) : 0;
}
window.addEventListener("hashchange", () => {
  if (!state.ready || state.computed) return;
  const q = new URLSearchParams(location.hash.slice(1));
  if (q.get("wc") && q.get("ww")) { state.wc = Number(q.get("wc")); state.ww = Math.max(1, Number(q.get("ww"))); }
  show(linkedIndex(state, location.hash), state);
});

function showError(text) {
  const box = document.getElementById("error");
  box.hidden = false;
  box.replaceChildren(document.createTextNode(text + " "), h("a", { href: "/" }, "Back to the explorer"));
}

// ------------------------------------------------------------------ linked scrolling

// Two stacks are linked by position when both have every frame's position and orientation, their
// slice normals are parallel and both stack documents carry the same Frame of Reference UID (same
// study is not enough: a repositioned patient, another MR session, some PET/CT have other frames of
// reference, where the same mm are another place): then the other viewport shows the slice nearest
// in mm. Otherwise by index (image k in one, image k in the other).
function geometryOf(vp) {
  if (!vp.frames.length || !vp.frames.every(f => Array.isArray(f.meta.ImagePositionPatient) && normalOf(f.meta.ImageOrientationPatient))) return null;
  return normalOf(vp.frames[0].meta.ImageOrientationPatient);
}
function linkMode(a, b) {
  const na = geometryOf(a), nb = geometryOf(b);
  if (!na || !nb) return "index";
  const fa = a.stack.FrameOfReferenceUID, fb = b.stack.FrameOfReferenceUID;
  if (!fa || !fb || fa !== fb) return "index";
  const c = Math.abs(dot(na, nb)) / Math.sqrt(dot(na, na) * dot(nb, nb));
  return c > 0.99 ? "position" : "index";
}
function matchIndex(src, dst) {
  if (!dst.frames.length) return 0;
  if (!src.frames.length) return 0;
  if (linkMode(src, dst) !== "position") return clamp(src.index, 0, dst.frames.length - 1);
  const ipp = src.frames[src.index].meta.ImagePositionPatient.map(Number);
  let best = 0, bd = Infinity;
  for (let k = 0; k < dst.frames.length; k++) {
    const m = dst.frames[k].meta, n = normalOf(m.ImageOrientationPatient);
    const d = Math.abs(dot(n, ipp) - dot(n, m.ImagePositionPatient.map(Number)));
    if (d < bd) { bd = d; best = k; }
  }
  return best;
}
function updateLink() {
  state.linkMode = viewports.length > 1 && viewports.every(v => v.frames.length) ? linkMode(viewports[0], viewports[1]) : null;
}
function syncOthers(src) {
  updateLink();
  if (!state.linked || viewports.length < 2) return;
  for (const vp of viewports) {
    if (vp === src || !vp.frames.length || !src.frames.length) continue;
    const j = matchIndex(src, vp);
    if (j !== vp.index || !vp.cache.has(j)) show(j, vp, { sync: false });
  }
}

// ------------------------------------------------------------------ series switcher, comparison

let studySeries = null;   // the study's series, in Series Number order
const seriesNumber = (se) => num((se.MainDicomTags || {}).SeriesNumber);
function bySeriesNumber(a, b) {
  const x = seriesNumber(a), y = seriesNumber(b);
  if (x !== y) return x === null ? 1 : y === null ? -1 : x - y;
  return ((a.MainDicomTags || {}).SeriesDescription || "").localeCompare((b.MainDicomTags || {}).SeriesDescription || "");
}
async function loadStudySeries(studyId) {
  try { studySeries = (await getJson(`/studies/${encodeURIComponent(studyId)}/series`)).sort(bySeriesNumber); }
  catch (e) { studySeries = []; }
  renderSeries();
}
// The series the study list's View opens (list: the study's series in Series Number order): the first
// that is not a localizer (Image Type LOCALIZER, or described as a scout, topogram, localizer...) and
// holds more than a few images; else the image series with the most frames; else the first. Asks the
// board only what the series list does not say: the first instance's Image Type of the series that
// could be chosen, and the frame counts of the series with few instances (a cine is one instance).
async function chooseFirstSeries(list) {
  const images = list.filter(se => (se.Instances || []).length && !NON_IMAGE.has((se.MainDicomTags || {}).Modality));
  if (!images.length) return list[0] || null;
  const described = (se) => { const t = se.MainDicomTags || {}; return LOCALIZER_WORDS.test(`${t.SeriesDescription || ""} ${t.ProtocolName || ""}`); };
  const imageType = async (se) => {   // "ORIGINAL\PRIMARY\LOCALIZER"; unknown when it cannot be read
    try {
      const r = await fetch(`/instances/${encodeURIComponent(se.Instances[0])}/content/0008-0008`, { headers: PAGE });
      return r.ok ? (await r.text()).toUpperCase() : "";
    } catch (e) { return ""; }
  };
  const frames = async (se) => {
    if (se.Instances.length > FEW_IMAGES) return se.Instances.length;
    try {
      const inst = await getJson(`/series/${encodeURIComponent(se.ID)}/instances`);
      return inst.reduce((n, i) => n + Math.max(num((i.MainDicomTags || {}).NumberOfFrames) || 1, 1), 0);
    } catch (e) { return se.Instances.length; }
  };
  const counted = await Promise.all(images.map(async se => ({ se, frames: await frames(se) })));
  for (const c of counted) {
    if (c.frames <= FEW_IMAGES || described(c.se)) continue;
    if (!/(^|\\)LOCALIZER(\\|$)/.test((await imageType(c.se)).trim())) return c.se;
  }
  return counted.reduce((best, c) => (c.frames > best.frames ? c : best)).se;
}

const seriesPanel = document.getElementById("series-panel");
const seriesBtn = document.getElementById("series-btn");
function renderSeries() {
  const list = document.getElementById("series-list");
  if (!studySeries) { list.replaceChildren(h("p", {}, "Loading…")); return; }
  if (!studySeries.length) { list.replaceChildren(h("p", {}, "No series.")); return; }
  list.replaceChildren(...studySeries.map(se => {
    const t = se.MainDicomTags || {}, n = (se.Instances || []).length;
    const mid = n ? se.Instances[Math.floor(n / 2)] : null;
    return h("button", { type: "button", class: "series-thumb", "data-series": se.ID, onclick: () => chooseSeries(se.ID) },
      mid ? h("img", { src: `/instances/${mid}/preview`, alt: "", loading: "lazy",
        onerror: (ev) => ev.target.replaceWith(h("span", { class: "noimg" }, "no image")) }) : h("span", { class: "noimg" }, "no image"),
      h("span", { class: "series-label" }, `${t.SeriesNumber ?? "–"} · ${t.Modality || ""} ${t.SeriesDescription || ""}`.trim()),
      h("span", { class: "series-count" }, `${n} img`));
  }));
  markSeries();
}
function markSeries() {
  for (const b of document.querySelectorAll(".series-thumb")) {
    const here = b.dataset.series === activeVp.seriesId;
    if (here) b.setAttribute("aria-current", "true"); else b.removeAttribute("aria-current");
  }
}
function openSeriesPanel(open) {
  seriesPanel.hidden = !open;
  seriesBtn.setAttribute("aria-expanded", String(open));
  if (open) {
    if (!studySeries && state.stack && state.stack.Study) loadStudySeries(state.stack.Study);
    renderSeries();
    const here = seriesPanel.querySelector(".series-thumb[aria-current=true]") || seriesPanel.querySelector("button");
    if (here) here.focus({ preventScroll: false });   // a keyboard (or VoiceOver) user lands in the list
  }
}
seriesPanel.addEventListener("keydown", (e) => { if (e.key === "Escape") { e.preventDefault(); openSeriesPanel(false); seriesBtn.focus(); } });
seriesBtn.addEventListener("click", () => openSeriesPanel(seriesPanel.hidden));
document.getElementById("series-close").addEventListener("click", () => openSeriesPanel(false));
function chooseSeries(id) {
  openSeriesPanel(false);
  activeVp.root.focus({ preventScroll: true });   // the arrow keys scroll the series chosen
  stopCine();
  if (activeVp === state) undoStack.length = 0;   // the undo steps belong to the key images shown before
  viewChanged(activeVp);   // another series by hand (a teaching session's follower detaches)
  openSeries(activeVp, id, { index: -1, byUser: true });
}

const compareBtn = document.getElementById("compare");
const linkBtn = document.getElementById("link");
function setCompare(on) {
  if (on && viewports.length === 1) {
    const root = newStage();
    stagesEl.insertBefore(root, document.getElementById("error"));
    const vp = makeViewport(root);
    viewports.push(vp);
    wire(vp);
    stagesEl.classList.add("split");
    setActive(vp);
    resize();
    openSeries(vp, state.seriesId || PATH_ID, { index: -1 });
  } else if (!on && viewports.length > 1) {
    const vp = viewports.pop();
    for (const t of tools.values()) if (t.clear) safely(() => t.clear(vp));
    vp.generation++; vp.abort.abort();
    vp.root.remove();
    stagesEl.classList.remove("split");
    stopCine();
    setActive(state);
    resize();
  }
  compareBtn.setAttribute("aria-pressed", String(viewports.length > 1));
  linkBtn.hidden = viewports.length < 2;
  updateLink();
}
compareBtn.addEventListener("click", () => setCompare(viewports.length < 2));
linkBtn.addEventListener("click", () => {
  state.linked = !state.linked;
  linkBtn.setAttribute("aria-pressed", String(state.linked));
  if (state.linked) syncOthers(activeVp);
  for (const vp of viewports) draw(vp);
});

// ------------------------------------------------------------------ the hook API (measure.js, mpr.js)

const tools = new Map();       // "tool:NAME" -> {name, label, down, move, up, draw, clear}
const paintHooks = [];
const pluginBar = document.getElementById("plugin-tools");

// the decoded frames of vp but its shown one forgotten (fetched again when scrolled to): a reformat
// holds a whole volume twice, and an iPad's tab has no room for the other viewport's cache beside it
function dropCache(vp) {
  const keep = vp.cache.get(vp.index);
  vp.cache = new Map(); vp.cacheBytes = 0; vp.full = false;
  if (keep) remember1(vp, vp.index, keep);
  vp.loaded = vp.cache.size;
}

// every frame of vp's stack, decoded, in stack order (what an MPR needs); the other viewports keep
// only their shown frame meanwhile
async function loadAll(vp) {
  for (const v of viewports) if (v !== vp) dropCache(v);
  const gen = vp.generation, n = vp.frames.length, out = new Array(n);
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      out[i] = await fetchFrame(vp, i);
      if (gen !== vp.generation) throw new Error("the viewport shows another stack now");
    }
  };
  await Promise.all(Array.from({ length: Math.min(PREFETCH, n) }, worker));
  return out;
}

// a computed stack (a reformat) in vp: scrolling, window/level and tools as for a series
function showStack(vp, { title, frames }) {
  const from = vp.stack || {};
  setStack(vp, { Series: null, Study: from.Study || null, Patient: from.Patient || null, Modality: from.Modality || "",
    StudyDescription: from.StudyDescription || "", SeriesDescription: title || "", Title: title || "Computed stack",
    FrameOfReferenceUID: from.FrameOfReferenceUID, PatientIdentityRemoved: !!from.PatientIdentityRemoved,
    PatientName: from.PatientName || "", FrameTime: null, Order: "computed", Notices: [], Frames: frames.map(f => f.meta) }, null);
  vp.index = Math.floor(frames.length / 2);
  frames.forEach((f, i) => vp.cache.set(i, withRange(f.image)));   // all kept: a reformat cannot be fetched again
  vp.loaded = frames.length;
  if (vp === activeVp) setActive(vp);
  updateLink();
  markSeries();
  return show(vp.index, vp, { sync: false });
}

// A view change: fn(vp, {byUser}) after the shown image, window, zoom or pan changed; byUser false
// when it came through goTo/setView/openSeries below (a teaching session's follower tells its own
// scrolling from the teacher's by it; the presenter sends its own).
const viewHooks = [];
let applying = 0;
function viewChanged(vp) {
  const byUser = applying === 0;
  for (const fn of viewHooks) safely(() => fn(vp, { byUser }));
}
function quietly(fn) {   // what fn starts synchronously is not the user's doing
  applying++;
  try { return fn(); } finally { applying--; }
}

// The image pixel drawn at the middle of vp's canvas (within the frame), or null when not panned.
function centerOf(vp) {
  const m = vp.map;
  if (!m || (Math.abs(vp.panX) < 0.5 && Math.abs(vp.panY) < 0.5)) return null;
  const x = (vp.canvas.width / 2 - m.ox) / m.scale, y = (vp.canvas.height / 2 - m.oy) / m.scale;
  return [Math.round(clamp(x, 0, m.width) * 100) / 100, Math.round(clamp(y, 0, m.height) * 100) / 100];
}

// What vp shows, in a teaching session's view-state words.
function getView(vp) {
  const img = vp.image();
  const grey = !(img && img.channels >= 3) && vp.wc !== null && vp.ww !== null;
  return { Series: vp.seriesId, Image: vp.index, Frame: null,
    Window: grey ? { Center: Math.round(vp.wc * 100) / 100, Width: Math.max(Math.round(vp.ww * 100) / 100, 1) } : null,
    Zoom: Math.round(vp.zoom * 1000) / 1000, Center: centerOf(vp) };
}

// The view given (window {Center, Width} or null: the image's own; zoom; centre in image pixels or
// null: the frame's middle), shown at once; fields left out stay as they are.
function setView(vp, v) {
  quietly(() => {
    if ("window" in v) {
      const w = v.window;
      if (w && Number(w.Width) > 0) { vp.wc = Number(w.Center); vp.ww = Math.max(Number(w.Width), 1); }
      else { vp.wc = null; vp.ww = null; }
    }
    if ("zoom" in v) vp.zoom = clamp(num(v.zoom) ?? 1, 0.1, 20);
    if ("center" in v) {
      vp.panX = 0; vp.panY = 0;
      vp.pendingCenter = Array.isArray(v.center) && v.center.length === 2 ? v.center.map(Number) : null;
    }
    draw(vp);
  });
}

// Image `index` of vp shown (the frames around it fetched next, nearest first).
function goTo(vp, index) {
  if (!vp.frames.length) return Promise.resolve();
  const far = Math.abs(clamp(index, 0, vp.frames.length - 1) - vp.index) > MAX_CACHED / 4;
  const p = quietly(() => show(index, vp));
  if (far) vp.full = false;   // the frames around the new place push out the far ones
  prefetch(vp);
  return p;
}

window.PipacsViewer = {
  h,            // the element builder (text always as text nodes), for live.js and plugins
  viewports,
  active: () => activeVp,
  live: LIVE,
  openSeries: (vp, id, opts = {}) => quietly(() => openSeries(vp, id, opts)),
  goTo,
  setView,
  getView,
  onViewChange(fn) { viewHooks.push(fn); },
  imagePoint,
  setTool,
  prefetch,
  // the study's series the study list's View would open (not the scout), or null
  async firstSeriesOf(studyId) {
    const list = (await getJson(`/studies/${encodeURIComponent(studyId)}/series`)).sort(bySeriesNumber);
    const se = await chooseFirstSeries(list);
    return se ? se.ID : null;
  },
  // a teaching case's key images (and their annotations) drawn over its images, nothing editable
  setCase(doc) {
    state.case = doc ? { ...doc, KeyImages: doc.KeyImages || [] } : null;
    state.editing = false;
    state.selected = -1;
    for (const vp of viewports) draw(vp);
  },
  setTitle(text) { document.getElementById("title").textContent = text; },
  addTool(tool) {
    const key = `tool:${tool.name}`;
    tools.set(key, tool);
    const b = h("button", { type: "button", "data-tool": key, id: `tool-${tool.name}`, "aria-pressed": "false" }, tool.label || tool.name);
    b.addEventListener("click", () => setTool(state.tool === key ? "scroll" : key));
    pluginBar.append(b);
    pluginBar.hidden = false;
    return b;
  },
  addAction(action) {
    const b = h("button", { type: "button", id: `action-${action.name}` }, action.label || action.name);
    b.addEventListener("click", () => safely(() => action.run(activeVp)));
    pluginBar.append(b);
    pluginBar.hidden = false;
    return b;
  },
  onPaint(fn) { paintHooks.push(fn); },
  loadAll,
  showStack,
  // a plugin's start: fn(PipacsViewer) now (the viewer is there). Scripts loaded before viewer.js
  // push fn onto window.PipacsPlugins instead; both ways are one line:
  //   (window.PipacsPlugins = window.PipacsPlugins || []).push(register);
  ready(fn) { safely(() => fn(window.PipacsViewer)); },
};
// the plugins queued before the viewer was there start now; later pushes start at once
{
  const queued = Array.isArray(window.PipacsPlugins) ? window.PipacsPlugins : [];
  window.PipacsPlugins = { push: (...fns) => { for (const fn of fns) window.PipacsViewer.ready(fn); return 0; } };
  window.PipacsPlugins.push(...queued);
}

// ------------------------------------------------------------------ the first series

async function load() {
  makeViewport(stage, state);
  viewports.push(state);
  wire(state);
  if (LIVE) {   // live.js opens what the teaching session's channel names
    document.getElementById("title").textContent = "Teaching session";
    document.getElementById("back").href = "/";
    return;
  }
  let id = PATH_ID;
  if (QUERY.get("study")) {   // the study list's View: the study's first series worth seeing (not the scout)
    try { studySeries = (await getJson(`/studies/${encodeURIComponent(QUERY.get("study"))}/series`)).sort(bySeriesNumber); } catch (e) {
      showError(e.status === 404 ? "This study does not exist any more (it may have been deleted)." : `Cannot open the study: ${e.message}`);
      return;
    }
    const se = await chooseFirstSeries(studySeries);
    if (!se) { showError("This study holds no series."); return; }
    id = se.ID;
  }
  let failed = null;
  const ok = await openSeries(state, id, {
    before: async () => !state.caseId || loadCase(),
    index: (vp) => {
      const q = new URLSearchParams(location.hash.slice(1));
      if (q.get("wc") && q.get("ww")) { vp.wc = Number(q.get("wc")); vp.ww = Math.max(1, Number(q.get("ww"))); }
      else if (state.case) { const k = keyImageIndex(); if (k >= 0) return k; }
      return linkedIndex(vp, location.hash);
    },
  }).catch(e => { failed = e; return false; });
  if (!ok && !state.case && !state.ready && document.getElementById("error").hidden) {
    const why = state.ov.err.textContent || (failed && failed.message) || "";
    state.ov.err.hidden = true;
    showError(why || "Cannot open the series.");
  }
}

// ------------------------------------------------------------------ interaction

function resize() {
  const dpr = window.devicePixelRatio || 1;
  for (const vp of viewports) {
    const r = vp.root.getBoundingClientRect();
    vp.canvas.width = Math.max(1, Math.round(r.width * dpr));
    vp.canvas.height = Math.max(1, Math.round(r.height * dpr));
    draw(vp);
  }
}
window.addEventListener("resize", resize);

function setWindow(vp, wc, ww) {
  vp.wc = wc; vp.ww = Math.max(1, ww);
  show(vp.index, vp, { sync: false, viewChanged: true });
}
function preset(vp, name) {
  if (name === "default") {
    const img = vp.image();
    if (img) setWindow(vp, ...defaultWindow(img, vp.frame()));
  } else setWindow(vp, ...PRESETS[name]);
}
function reset(vp = activeVp) {
  vp.zoom = 1; vp.panX = 0; vp.panY = 0;
  vp.pendingCenter = null;
  preset(vp, "default");
}
function step(vp, d) { if (vp.frames.length) show(vp.index + d, vp); }

function setTool(t) {
  state.tool = t;
  for (const b of document.querySelectorAll("[data-tool]")) b.setAttribute("aria-pressed", b.dataset.tool === t ? "true" : "false");
}
for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
for (const b of document.querySelectorAll("[data-preset]")) b.addEventListener("click", () => preset(activeVp, b.dataset.preset));
document.getElementById("reset").addEventListener("click", () => reset(activeVp));
slider.addEventListener("input", () => show(Number(slider.value), activeVp));

let timer = null;
// the stack's own pace (its Frame Time, or Recommended Display Frame Rate / Cine Rate, in ms per frame)
function cineInterval(vp) {
  const ms = num(vp.stack && vp.stack.FrameTime);
  return Math.max(ms !== null && ms > 0 ? ms : CINE_MS, CINE_MIN_MS);
}
const playBtn = document.getElementById("play");
function stopCine() {
  state.playing = false;
  clearInterval(timer);
  playBtn.setAttribute("aria-pressed", "false");
  playBtn.textContent = "Play";
}
playBtn.addEventListener("click", () => {
  if (state.playing) { stopCine(); return; }
  const vp = activeVp;
  if (!vp.frames.length) return;
  state.playing = true;
  playBtn.setAttribute("aria-pressed", "true");
  playBtn.textContent = "Pause";
  state.cineMs = cineInterval(vp);
  timer = setInterval(() => show((vp.index + 1) % vp.frames.length, vp), state.cineMs);
});

let gesture = null;

// image pixel coordinates (x = column, y = row) of a point on the screen, in viewport vp
function imagePoint(vp, p) {
  const r = vp.canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const m = vp.map;
  if (!m) return null;
  return [((p.x - r.left) * dpr - m.ox) / m.scale, ((p.y - r.top) * dpr - m.oy) / m.scale];
}

function wire(vp) {
  const root = vp.root;
  root.addEventListener("wheel", (e) => { e.preventDefault(); setActive(vp); step(vp, e.deltaY > 0 ? 1 : -1); }, { passive: false });
  root.addEventListener("pointerdown", (e) => {
    if (vp !== activeVp) setActive(vp);
    root.setPointerCapture(e.pointerId);
    vp.pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    gesture = startGesture(vp, e);
  });
  root.addEventListener("pointermove", (e) => {
    if (!vp.pointers.has(e.pointerId)) return;
    vp.pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    if (gesture && gesture.vp === vp) moveGesture(gesture, e);
  });
  const endPointer = (e) => {
    if (!vp.pointers.has(e.pointerId)) return;
    const g = gesture && gesture.vp === vp ? gesture : null;
    if (g && g.kind === "annotate" && vp.pointers.size === 1 && e.type === "pointerup") finishAnnotate(g);
    if (g && g.kind === "plugin" && vp.pointers.size === 1 && e.type === "pointerup") {
      const pt = imagePoint(vp, { x: e.clientX, y: e.clientY });
      if (pt && g.tool.up) safely(() => g.tool.up(vp, pt, e));
      draw(vp);
    }
    vp.pointers.delete(e.pointerId);
    gesture = vp.pointers.size ? startGesture(vp, e, true) : null;
    if (gesture && gesture.kind === "annotate") gesture.stale = true;   // the finger left of a pinch: no tap
  };
  root.addEventListener("pointerup", endPointer);
  root.addEventListener("pointercancel", endPointer);
  // a double tap (two short taps of one finger that barely moved) resets the view
  let lastTap = 0, tapStart = null;
  root.addEventListener("pointerdown", (e) => {
    tapStart = vp.pointers.size === 0 ? { x: e.clientX, y: e.clientY, t: performance.now() } : null;   // runs before the gesture handler adds this pointer
  }, true);
  root.addEventListener("pointerup", (e) => {
    if (e.pointerType !== "touch" || !tapStart) return;
    const now = performance.now();
    const isTap = now - tapStart.t < 250 && Math.hypot(e.clientX - tapStart.x, e.clientY - tapStart.y) < 10;
    tapStart = null;
    if (!isTap) return;
    if (ANNOTATION_TOOLS.has(state.tool) || tools.has(state.tool)) return;   // taps select, place labels, measure there
    if (now - lastTap < 350) { reset(vp); lastTap = 0; } else lastTap = now;
  });
  root.addEventListener("keydown", (e) => keydown(vp, e));
}

function startGesture(vp, ev, restart) {
  const pts = [...vp.pointers.values()];
  if (pts.length >= 2) {
    const [a, b] = pts;
    return { kind: "pinch", vp, dist: Math.hypot(a.x - b.x, a.y - b.y), mid: { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 },
      zoom: vp.zoom, panX: vp.panX, panY: vp.panY };
  }
  const p = pts[0];
  const tool = tools.get(state.tool);
  if (tool) {
    if (restart) return { kind: "none", vp };   // the finger left on the glass after a pinch
    const pt = imagePoint(vp, p);
    if (pt && tool.down) safely(() => tool.down(vp, pt, ev));
    draw(vp);
    return { kind: "plugin", vp, tool };
  }
  if (ANNOTATION_TOOLS.has(state.tool) && state.editing && vp === state && !state.computed) {
    const g = startAnnotate(p);
    if (g) g.vp = vp;
    return g;
  }
  const kind = ANNOTATION_TOOLS.has(state.tool) ? "scroll" : state.tool;
  return { kind, vp, x: p.x, y: p.y, index: vp.index, wc: vp.wc, ww: vp.ww, panX: vp.panX, panY: vp.panY };
}

function moveGesture(g, ev) {
  const vp = g.vp;
  const pts = [...vp.pointers.values()];
  const dpr = window.devicePixelRatio || 1;
  if (g.kind === "pinch" && pts.length >= 2) {
    const [a, b] = pts;
    const dist = Math.hypot(a.x - b.x, a.y - b.y);
    vp.zoom = clamp(g.zoom * dist / Math.max(g.dist, 1), 0.25, 20);
    vp.panX = g.panX + ((a.x + b.x) / 2 - g.mid.x) * dpr;
    vp.panY = g.panY + ((a.y + b.y) / 2 - g.mid.y) * dpr;
    draw(vp);
    viewChanged(vp);
    return;
  }
  const p = pts[0];
  if (g.kind === "plugin") {
    const pt = imagePoint(vp, p);
    if (pt && g.tool.move) safely(() => g.tool.move(vp, pt, ev));
    draw(vp);
    return;
  }
  const dx = p.x - g.x, dy = p.y - g.y;
  if (g.kind === "scroll") {
    const target = g.index + Math.round(dy / 8);
    if (target !== vp.index) show(target, vp);
  } else if (g.kind === "window") {
    const sens = Math.max(g.ww, 10) / 300;
    setWindow(vp, g.wc - dy * sens, g.ww + dx * sens * 2);
  } else if (g.kind === "pan") {
    vp.panX = g.panX + dx * dpr; vp.panY = g.panY + dy * dpr; draw(vp); viewChanged(vp);
  } else if (g.kind === "annotate") {
    moveAnnotate(g, p);
  }
}

function keydown(vp, e) {
  const k = e.key;
  if (k === "ArrowDown" || k === "ArrowRight" || k === "PageDown") step(vp, 1);
  else if (k === "ArrowUp" || k === "ArrowLeft" || k === "PageUp") step(vp, -1);
  else if (k === "Home") show(0, vp);
  else if (k === "End") show(vp.frames.length - 1, vp);
  else if (k === "+" || k === "=") { vp.zoom = Math.min(vp.zoom * 1.25, 20); draw(vp); viewChanged(vp); }
  else if (k === "-") { vp.zoom = Math.max(vp.zoom / 1.25, 0.25); draw(vp); viewChanged(vp); }
  else if (k === "0") reset(vp);
  else if (k === " ") playBtn.click();
  else if (/^[1-6]$/.test(k)) preset(vp, PRESET_KEYS[Number(k) - 1]);
  else if (k === "w") setTool("window");
  else if (k === "s") setTool("scroll");
  else if (k === "p") setTool("pan");
  else if ((k === "Delete" || k === "Backspace") && state.editing && state.selected >= 0 && vp === state) deleteSelected();
  else if (k === "z" && (e.metaKey || e.ctrlKey) && state.editing) undo();
  else return;
  e.preventDefault();
}

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

// What is on screen now becomes the key image's view (the slide and the workstation show that).
function recordView(k) {
  const img = state.cache.get(state.index);
  k.Window = (img && img.channels >= 3) || state.ww === null ? null : { Center: state.wc, Width: Math.max(state.ww, 1) };
  k.Zoom = clamp(state.zoom, 0.1, 20);
  k.Center = centerOf(state);
}

// Opened from a key image (?instance=...&frame=...): that image (its index, -1: none), with the view
// it was marked with.
function keyImageIndex() {
  const inst = QUERY.get("instance");
  if (!inst) return -1;
  const frame = Math.max(Number(QUERY.get("frame")) || 1, 1);
  const i = state.frames.findIndex(f => f.id === inst && f.frame + 1 === frame);
  if (i < 0) return -1;
  applyKeyView(state.case.KeyImages.find(x => x.Instance === inst && (x.Frame || 1) === frame));
  return i;
}

function currentKeyIndex() {
  if (!state.case || !state.frames.length || state.computed) return -1;
  const f = state.frames[state.index];
  return state.case.KeyImages.findIndex(k => k.Instance === f.id && (k.Frame || 1) === f.frame + 1);
}
function currentKey() { const k = currentKeyIndex(); return k >= 0 ? state.case.KeyImages[k] : null; }
function hereId() { const f = state.frames[state.index]; return `${f.id}/${f.frame + 1}`; }

function spacingHere() {   // the stack document says which spacing it gives
  const m = state.frames[state.index].meta;
  const imager = m.SpacingSource === "ImagerPixelSpacing";
  return Annot.spacingOf(imager ? null : m.PixelSpacing, imager ? m.PixelSpacing : null);
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
  const keysHere = state.computed ? [] : state.case.KeyImages.map(x => state.frames.findIndex(f => f.id === x.Instance && f.frame + 1 === (x.Frame || 1)))
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
  if (state.computed) return;   // a reformat has no key images
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
  if (!state.editing || !state.ready || state.computed || !state.frames.length) return;
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

function toImage(p) { return imagePoint(state, p); }

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
