/* pipacs multi-planar reformats: coronal and sagittal images computed in the browser from a stack
   of parallel slices the viewer has already loaded (PipacsViewer.loadAll), shown back through
   PipacsViewer.showStack. Along the stack the slices are resampled (linear interpolation between
   the two nearest slices) at the slices' real spacing, taken from their positions (not from Slice
   Thickness, which says how thick a slice is, not how far apart slices are), to about the in-plane
   pixel spacing: square-ish pixels, and the reformat frames carry the Pixel Spacing that makes
   measure.js measure right on them. A stack that is not one volume (sizes or orientations differ,
   positions missing, shared or with a gap, fewer than 3 slices) is refused with a notice.
   The resampling runs in a Worker started from this same file (a 100 x 512 x 512 CT is ~190 M
   interpolations: seconds of a slow iPad's main thread), or in the page where there is no Worker. */
"use strict";

const PipacsMPR = (() => {
  const MAX_VOXELS = 64 * 1024 * 1024;   // at most 64 M output pixels (128 MB of 16-bit): an iPad tab's share
  // the slices, loaded and copied for the Worker (held twice: 200 MB of 16-bit at most, beside the
  // reformat's 128 MB and one viewport's cache; the other viewport's is dropped): ~190 of 512 x 512
  const MAX_INPUT_VOXELS = 50 * 1000 * 1000;
  const MIN_SLICES = 3;
  const IOP_TOLERANCE = 1e-3;            // the stack document's own test of "orientations agree"
  const GAP_FACTOR = 1.5;                // a gap this much wider than the usual spacing: a slice is missing

  const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
  const scale = (a, s) => [a[0] * s + 0, a[1] * s + 0, a[2] * s + 0];   // + 0: no -0 in a tag value
  const plus = (a, b) => [a[0] + b[0], a[1] + b[1], a[2] + b[2]];
  const numbers = (v, n) => Array.isArray(v) && v.length === n && v.every(x => Number.isFinite(Number(x))) ? v.map(Number) : null;

  /** Whether the stack frames (stack document frames, in stack order) form one volume. Returns
      {ok: true, geometry} or {ok: false, reason} (a sentence for the notice line). geometry: order
      (frame indices by position, highest first), positions (mm along the normal, same order),
      rows, columns, rowDir, colDir, normal, spacing [row, col], origin (IPP of the first slice). */
  function checkVolume(frames) {
    if (!frames || frames.length < MIN_SLICES) return { ok: false, reason: `A reformat needs at least ${MIN_SLICES} slices; this stack has ${frames ? frames.length : 0}.` };
    const f0 = frames[0];
    const sizes = new Set(frames.map(f => `${f.Columns}x${f.Rows}`));
    if (sizes.size > 1) return { ok: false, reason: `No reformat: the images have ${sizes.size} different sizes (${[...sizes].slice(0, 3).join(", ")}).` };
    if (frames.some(f => (f.SamplesPerPixel || 1) !== 1)) return { ok: false, reason: "No reformat of colour images." };
    const noPos = frames.filter(f => !numbers(f.ImagePositionPatient, 3) || !numbers(f.ImageOrientationPatient, 6)).length;
    if (noPos) return { ok: false, reason: `No reformat: ${noPos} of ${frames.length} images have no position or orientation.` };
    const iop = numbers(f0.ImageOrientationPatient, 6);
    if (frames.some(f => f.ImageOrientationPatient.some((v, k) => Math.abs(Number(v) - iop[k]) > IOP_TOLERANCE))) {
      return { ok: false, reason: "No reformat: the images do not all have the same orientation." };
    }
    const ps = numbers(f0.PixelSpacing, 2);
    if (!ps || !(ps[0] > 0 && ps[1] > 0)) return { ok: false, reason: "No reformat: the images have no Pixel Spacing." };
    if (frames.some(f => !numbers(f.PixelSpacing, 2) || f.PixelSpacing.some((v, k) => Math.abs(Number(v) - ps[k]) > 1e-4))) {
      return { ok: false, reason: "No reformat: the images do not all have the same Pixel Spacing." };
    }
    if (frames.some(f => Number(f.RescaleSlope ?? 1) !== Number(f0.RescaleSlope ?? 1) || Number(f.RescaleIntercept ?? 0) !== Number(f0.RescaleIntercept ?? 0))) {
      return { ok: false, reason: "No reformat: the images' rescale (slope, intercept) differs from slice to slice." };
    }
    if (frames.length * f0.Rows * f0.Columns > MAX_INPUT_VOXELS) {
      return { ok: false, reason: `No reformat: ${frames.length} slices of ${f0.Columns}×${f0.Rows} are more than an iPad's page can hold twice (at most ${MAX_INPUT_VOXELS / 1e6} million pixels).` };
    }
    const rowDir = iop.slice(0, 3), colDir = iop.slice(3, 6), normal = cross(rowDir, colDir);
    const order = frames.map((f, k) => [k, dot(normal, numbers(f.ImagePositionPatient, 3))]).sort((a, b) => b[1] - a[1]);
    const positions = order.map(([, p]) => p);
    const gaps = positions.slice(1).map((p, k) => positions[k] - p);
    const shared = gaps.filter(g => g < 1e-3).length;
    if (shared) return { ok: false, reason: `No reformat: ${shared + 1 > 2 ? `${shared} images share` : "2 images share"} a position with another.` };
    const sorted = [...gaps].sort((a, b) => a - b), usual = sorted[Math.floor((sorted.length - 1) / 2)];   // the lower median
    const wide = gaps.findIndex(g => g > usual * GAP_FACTOR);
    if (wide >= 0) {
      return { ok: false, reason: `No reformat: a gap of ${gaps[wide].toFixed(2)} mm between slices where they are ${usual.toFixed(2)} mm apart (a slice is missing).` };
    }
    // slices shifted sideways against each other (a tilted gantry) do not stack into a box
    const origin = numbers(frames[order[0][0]].ImagePositionPatient, 3);
    for (const [k] of order) {
      const d = numbers(frames[k].ImagePositionPatient, 3).map((v, j) => v - origin[j]);
      if (Math.abs(dot(d, rowDir)) > ps[1] / 2 || Math.abs(dot(d, colDir)) > ps[0] / 2) {
        return { ok: false, reason: "No reformat: the slices are shifted sideways against each other (gantry tilt)." };
      }
    }
    return { ok: true, geometry: { order: order.map(([k]) => k), positions, rows: f0.Rows, columns: f0.Columns,
      rowDir, colDir, normal, spacing: ps, origin } };
  }

  const ordinal = (n) => `${n}${n === 2 ? "nd" : n === 3 ? "rd" : "th"}`;   // 2..8 here

  /** The patient axis a direction points along most: "sagittal" (x), "coronal" (y), "axial" (z). */
  function planeOf(normal) {
    const a = normal.map(Math.abs);
    return a[0] >= a[1] && a[0] >= a[2] ? "sagittal" : a[1] >= a[2] ? "coronal" : "axial";
  }

  /** The plan of a reformat: which image axis becomes the frames ("rows": one frame per image row,
      the plane holding the row direction and the normal; "cols": one per image column), the
      output size and spacing, and each frame's geometry. name: "coronal" or "sagittal"; the plane
      is chosen by orientation, so a reformat of a coronal stack asked for "sagittal" is right too. */
  function plan(geometry, name) {
    const g = geometry;
    const down = scale(g.normal, -1);   // down the reformat = along the stack, highest position first
    const planes = {
      rows: { across: g.rowDir, along: g.colDir, normal: cross(g.rowDir, down), width: g.columns, count: g.rows,
        inPlane: g.spacing[1], step: g.spacing[0] },
      cols: { across: g.colDir, along: g.rowDir, normal: cross(g.colDir, down), width: g.rows, count: g.columns,
        inPlane: g.spacing[0], step: g.spacing[1] },
    };
    const axis = Object.keys(planes).find(k => planeOf(planes[k].normal) === name);
    if (!axis) return { ok: false, reason: `This stack is ${planeOf(g.normal)}: its reformats are not ${name}.` };
    const p = planes[axis];
    const extent = g.positions[0] - g.positions[g.positions.length - 1];
    let height = Math.max(Math.round(extent / p.inPlane) + 1, g.positions.length);
    let frameStep = 1;
    // within the memory budget: first fewer frames (scrolling in bigger steps), the images kept fine
    while (Math.ceil(p.count / frameStep) * p.width * height > MAX_VOXELS && frameStep < 8) frameStep++;
    while (Math.ceil(p.count / frameStep) * p.width * height > MAX_VOXELS && height > g.positions.length) {
      height = Math.max(Math.floor(height * 0.8), g.positions.length);
    }
    const rowSpacing = extent / (height - 1);
    const frames = [];
    for (let k = 0; k < p.count; k += frameStep) frames.push(k);
    return { ok: true, axis, name, width: p.width, height, rowSpacing, colSpacing: p.inPlane, frameIndices: frames, frameStep,
      frameSpacing: p.step * frameStep, across: p.across, along: p.along, down, normal: p.normal,
      notice: frameStep > 1 ? `Reformat: every ${ordinal(frameStep)} ${axis === "rows" ? "row" : "column"} (${(p.step * frameStep).toFixed(2)} mm apart), to fit the iPad's memory.` : "" };
  }

  /** Resamples: volume (slices in geometry order, each rows x columns, one typed array), positions
      (mm, highest first), the plan; returns one typed array of frames x height x width, same type.
      Output row r lies at z = positions[0] - r * rowSpacing, between slices s and s+1 with
      positions[s] >= z >= positions[s+1]; its value is round(a + (b - a) * t), t the fraction of the way. */
  function resample(volume, slices, rows, columns, positions, pl) {
    const T = volume.constructor;
    const W = pl.width, H = pl.height, F = pl.frameIndices.length, plane = rows * columns;
    const out = new T(F * W * H);
    const s0 = new Int32Array(H), tt = new Float64Array(H);
    let s = 0;
    for (let r = 0; r < H; r++) {
      const z = positions[0] - r * pl.rowSpacing;
      while (s < slices - 2 && positions[s + 1] > z) s++;
      const t = (positions[s] - z) / (positions[s] - positions[s + 1]);
      s0[r] = s; tt[r] = Math.min(Math.max(t, 0), 1);
    }
    const rounding = T === Float32Array || T === Float64Array ? (v) => v : Math.round;
    for (let fi = 0; fi < F; fi++) {
      const k = pl.frameIndices[fi], base = fi * W * H;
      for (let r = 0; r < H; r++) {
        const a0 = s0[r] * plane, b0 = a0 + plane, t = tt[r], o = base + r * W;
        if (pl.axis === "rows") {            // frame k = image row k: out[r][x] = vol[s][k][x]
          const ra = a0 + k * columns, rb = b0 + k * columns;
          if (t === 0) for (let x = 0; x < W; x++) out[o + x] = volume[ra + x];
          else for (let x = 0; x < W; x++) { const a = volume[ra + x]; out[o + x] = rounding(a + (volume[rb + x] - a) * t); }
        } else {                             // frame k = image column k: out[r][y] = vol[s][y][k]
          const ca = a0 + k, cb = b0 + k;
          if (t === 0) for (let y = 0; y < W; y++) out[o + y] = volume[ca + y * columns];
          else for (let y = 0; y < W; y++) { const a = volume[ca + y * columns]; out[o + y] = rounding(a + (volume[cb + y * columns] - a) * t); }
        }
      }
    }
    return out;
  }

  /** The stack-document frames of a reformat (as the viewer's own frames: geometry, spacing, LUT). */
  function frameMetas(geometry, pl, first, seriesKey) {
    const g = geometry;
    return pl.frameIndices.map((k) => {
      const offset = pl.axis === "rows" ? scale(g.colDir, k * g.spacing[0]) : scale(g.rowDir, k * g.spacing[1]);
      const ipp = plus(g.origin, offset);
      return {
        // no Instance: a reformat frame is no stored image (no key image, no pixels to fetch)
        Key: `${seriesKey}/${pl.name}/${k}`, Instance: null, Frame: 0, NumberOfFrames: 1,
        InstanceNumber: null, Reformat: pl.name, SourceIndex: k,
        Position: dot(pl.normal, ipp), SliceLocation: null, ImagePositionPatient: ipp,
        ImageOrientationPatient: [...pl.across, ...pl.down],
        PixelSpacing: [pl.rowSpacing, pl.colSpacing], SpacingSource: "PixelSpacing",
        SliceThickness: pl.frameSpacing, Rows: pl.height, Columns: pl.width, SamplesPerPixel: 1,
        PhotometricInterpretation: first.PhotometricInterpretation, BitsStored: first.BitsStored,
        PixelRepresentation: first.PixelRepresentation, RescaleSlope: first.RescaleSlope,
        RescaleIntercept: first.RescaleIntercept, RescaleType: first.RescaleType ?? null, Units: first.Units ?? null,
        WindowCenter: first.WindowCenter ?? null, WindowWidth: first.WindowWidth ?? null, Pixels: null,
      };
    });
  }

  /** One typed array holding the slices in geometry order (what the Worker is handed). */
  function pack(images, geometry) {
    const { rows, columns, order } = geometry;
    const types = new Set(order.map(k => images[k].data.constructor));
    const T = types.size === 1 ? [...types][0] : Int32Array;   // mixed types: one that holds them all
    const vol = new T(order.length * rows * columns);
    order.forEach((k, s) => {
      const img = images[k];
      if (!img || img.width !== columns || img.height !== rows || img.channels > 1) throw new Error(`slice ${k + 1} is not ${columns}x${rows}`);
      vol.set(img.data, s * rows * columns);
    });
    return vol;
  }

  let workerUrl = null;
  if (typeof document !== "undefined" && document.currentScript) workerUrl = document.currentScript.src;

  /** Runs the resampling in a Worker (this file), or here when no Worker can be had. */
  function run(vol, geometry, pl) {
    const job = { volume: vol, slices: geometry.order.length, rows: geometry.rows, columns: geometry.columns,
      positions: geometry.positions, plan: { axis: pl.axis, width: pl.width, height: pl.height, rowSpacing: pl.rowSpacing, frameIndices: pl.frameIndices } };
    if (typeof Worker === "undefined" || !workerUrl) {
      api.last = { worker: false };
      return Promise.resolve(resample(job.volume, job.slices, job.rows, job.columns, job.positions, job.plan));
    }
    return new Promise((resolve, reject) => {
      let w;
      try { w = new Worker(workerUrl); } catch (e) {
        api.last = { worker: false };
        resolve(resample(job.volume, job.slices, job.rows, job.columns, job.positions, job.plan));
        return;
      }
      w.onmessage = (e) => { w.terminate(); api.last = { worker: true }; if (e.data.error) reject(new Error(e.data.error)); else resolve(e.data.out); };
      w.onerror = (e) => { w.terminate(); reject(new Error(e.message || "the reformat worker failed")); };
      w.postMessage(job, [vol.buffer]);
    });
  }

  /** Computes a reformat: {ok, frames: [{meta, image}], title, notice} or {ok: false, reason}.
      stackFrames: the stack document's frames; images: the decoded frames, same order. */
  async function reformat(stackFrames, images, name, seriesKey = "stack") {
    const check = checkVolume(stackFrames);
    if (!check.ok) return check;
    const pl = plan(check.geometry, name);
    if (!pl.ok) return pl;
    const out = await run(pack(images, check.geometry), check.geometry, pl);
    const metas = frameMetas(check.geometry, pl, stackFrames[check.geometry.order[0]], seriesKey);
    const size = pl.width * pl.height;
    const frames = metas.map((meta, fi) => ({ meta, image: { width: pl.width, height: pl.height, channels: 1, data: out.subarray(fi * size, (fi + 1) * size) } }));
    return { ok: true, frames, plan: pl, notice: pl.notice };
  }

  // ---------------------------------------------------------------- the viewer's actions

  // the tools' one notice line is measure.js's (loaded before this file wherever reformats are offered)
  function notify(text) { window.PipacsMeasure.notice(text); }

  let busy = false;
  async function action(vp, name) {
    const V = window.PipacsViewer;
    if (busy) { notify("A reformat is being computed: one moment."); return; }
    const stack = vp.stack;
    if (!stack || !stack.Frames) return;
    if (stack.Order === "computed" || (stack.Frames[0] && stack.Frames[0].Reformat)) { notify("This is a reformat already: go back to the series with the series switcher first."); return; }
    const check = checkVolume(stack.Frames);
    if (!check.ok) { notify(check.reason); api.lastNotice = check.reason; return; }
    const pl = plan(check.geometry, name);
    if (!pl.ok) { notify(pl.reason); api.lastNotice = pl.reason; return; }
    busy = true;
    const label = name[0].toUpperCase() + name.slice(1);
    try {
      notify(`${label}: loading ${stack.Frames.length} slices…`);
      const images = await V.loadAll(vp);
      notify(`${label}: computing…`);
      const r = await reformat(stack.Frames, images, name, stack.Series || stack.SeriesInstanceUID || "stack");
      if (!r.ok) { notify(r.reason); api.lastNotice = r.reason; return; }
      const title = `${label} reformat · ${stack.Modality || ""} ${stack.SeriesDescription || ""}`.trim();
      api.result = r;
      await V.showStack(vp, { title, frames: r.frames });
      api.lastNotice = r.notice;
      notify(r.notice);
      api.shown = (api.shown || 0) + 1;
    } catch (e) {
      notify(`No ${name} reformat: ${e.message}`);
      api.lastNotice = e.message;
    } finally { busy = false; }
  }

  function register(V) {
    for (const [name, label] of [["coronal", "Coronal"], ["sagittal", "Sagittal"]]) {
      const b = V.addAction({ name: `mpr-${name}`, label, run: (vp) => action(vp, name) });
      if (b && b.setAttribute) b.setAttribute("aria-label", `${label} reformat of this stack`);
    }
  }

  const api = { MAX_VOXELS, MAX_INPUT_VOXELS, checkVolume, plan, resample, frameMetas, pack, reformat, planeOf, action, last: null };

  if (typeof window !== "undefined") {
    window.PipacsMPR = api;
    (window.PipacsPlugins = window.PipacsPlugins || []).push((V) => { register(V); api.registered = true; });
  } else if (typeof self !== "undefined" && typeof importScripts === "function") {
    // this file as the Worker: one job, its answer transferred back
    self.onmessage = (e) => {
      try {
        const j = e.data;
        const out = resample(j.volume, j.slices, j.rows, j.columns, j.positions, j.plan);
        self.postMessage({ out }, [out.buffer]);
      } catch (err) { self.postMessage({ error: String(err && err.message || err) }); }
    };
  }
  return api;
})();
