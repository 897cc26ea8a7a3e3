/* pipacs measurements: length, ellipse ROI and angle on the viewer's images (and on its reformats).
   Points are image pixel coordinates (x = column, y = row, (0,0) the top-left corner of the
   top-left pixel), as PipacsViewer hands them to a tool. The figures come from the stack
   document's frame: PixelSpacing [row, col] (rows are y, columns x), its SpacingSource, and the
   modality LUT (RescaleSlope / RescaleIntercept, Units). Measurements belong to the frame they were
   drawn on and live only in this page: they are not saved to the case.
   The pure functions (PipacsMeasure.spacing, length, angle, ellipseStats) need no page; the tools
   register themselves with window.PipacsViewer when it is there. */
"use strict";

const PipacsMeasure = (() => {
  const COLOR = "#69f0ae", SELECTED = "#4fc3f7", SHADOW = "rgba(0,0,0,.85)", BOX = "rgba(0,0,0,.62)";
  const MAX_PER_FRAME = 50;      // a fingertip's worth of measurements on one image is plenty
  const TAP_CSS_PX = 8;          // a finger that moved less than this did not drag: a tap
  const HIT_CSS_PX = 16;         // how far from a line a tap still selects it

  // ---------------------------------------------------------------- pure functions

  const num = (v) => (v === null || v === undefined || v === "" ? NaN : Number(v));

  /** The frame's pixel spacing in mm ({row, col, source, note}) or null when it has none.
      Imager Pixel Spacing measures at the detector (projection radiographs), not in the patient. */
  function spacing(meta) {
    const ps = meta && meta.PixelSpacing;
    if (!Array.isArray(ps) || ps.length < 2) return null;
    const row = num(ps[0]), col = num(ps[1]);
    if (!(row > 0 && col > 0 && Number.isFinite(row) && Number.isFinite(col))) return null;
    const source = meta.SpacingSource || "PixelSpacing";
    return { row, col, source, note: source === "ImagerPixelSpacing" ? "Imager Pixel Spacing: at the detector, not in the patient" : "" };
  }

  /** The distance between two image points: mm when the frame has a pixel spacing, else pixels.
      dx runs along a row (column spacing), dy down a column (row spacing). */
  function length(p0, p1, meta) {
    const dxp = p1[0] - p0[0], dyp = p1[1] - p0[1];
    const sp = spacing(meta);
    if (!sp) {
      const value = Math.hypot(dxp, dyp);
      return { value, unit: "px", note: "no pixel spacing: in image pixels", label: `${value.toFixed(1)} px (no pixel spacing)` };
    }
    const value = Math.hypot(dxp * sp.col, dyp * sp.row);
    const detector = sp.source === "ImagerPixelSpacing";
    return { value, unit: "mm", note: sp.note, label: `${value.toFixed(1)} mm${detector ? " (Imager Pixel Spacing, at the detector)" : ""}` };
  }

  /** The angle at b between b->a and b->c, in degrees (0..180), measured in mm when the frame has a
      pixel spacing (anisotropic pixels change angles), else in pixels. null when an arm has no length. */
  function angle(a, b, c, meta) {
    const sp = spacing(meta) || { row: 1, col: 1 };
    const ux = (a[0] - b[0]) * sp.col, uy = (a[1] - b[1]) * sp.row;
    const vx = (c[0] - b[0]) * sp.col, vy = (c[1] - b[1]) * sp.row;
    if (!Math.hypot(ux, uy) || !Math.hypot(vx, vy)) return null;
    // atan2 of cross and dot: accurate near 0 and 180 degrees, where acos is not
    return Math.abs(Math.atan2(ux * vy - uy * vx, ux * vx + uy * vy)) * 180 / Math.PI;
  }

  /** The modality LUT of a frame: {slope, intercept, unit, applies} (applies: the rescaled values
      mean something other than the stored ones, e.g. HU for CT). */
  function modalityLut(meta) {
    let slope = num(meta && meta.RescaleSlope), intercept = num(meta && meta.RescaleIntercept);
    if (!Number.isFinite(slope) || slope === 0) slope = 1;
    if (!Number.isFinite(intercept)) intercept = 0;
    const unit = (meta && (meta.Units || meta.RescaleType)) || "";
    return { slope, intercept, unit, applies: slope !== 1 || intercept !== 0 || !!(meta && meta.Units) };
  }

  /** Which pixels an ellipse ROI holds: the ellipse inscribed in the box with corners p0 and p1;
      a pixel counts when its centre (x + 0.5, y + 0.5) lies inside or on the ellipse. */
  function ellipsePixels(width, height, p0, p1, visit) {
    const cx = (p0[0] + p1[0]) / 2, cy = (p0[1] + p1[1]) / 2;
    const rx = Math.abs(p1[0] - p0[0]) / 2, ry = Math.abs(p1[1] - p0[1]) / 2;
    if (!(rx > 0 && ry > 0)) return;
    const y0 = Math.max(0, Math.floor(cy - ry)), y1 = Math.min(height - 1, Math.ceil(cy + ry));
    const x0 = Math.max(0, Math.floor(cx - rx)), x1 = Math.min(width - 1, Math.ceil(cx + rx));
    for (let y = y0; y <= y1; y++) {
      const ny = (y + 0.5 - cy) / ry;
      for (let x = x0; x <= x1; x++) {
        const nx = (x + 0.5 - cx) / rx;
        if (nx * nx + ny * ny <= 1) visit(y * width + x);
      }
    }
  }

  /** Statistics of an ellipse ROI on a decoded frame: pixel count, area (the ellipse's own, in mm²
      when the frame has a spacing, else px²), and mean, SD (population, as numpy's std), min and
      max in stored values and, when the modality LUT means something, in its units (HU for CT).
      null for a colour image (no single value per pixel) or an ROI holding no pixel centre. */
  function ellipseStats(image, meta, p0, p1) {
    if (!image || image.channels > 1) return null;
    const { width, height, data } = image;
    let n = 0, sum = 0, min = Infinity, max = -Infinity;
    ellipsePixels(width, height, p0, p1, (k) => {
      const v = data[k];
      n++; sum += v;
      if (v < min) min = v;
      if (v > max) max = v;
    });
    if (!n) return null;
    const mean = sum / n;
    let ss = 0;   // a second pass about the mean: no cancellation on 16-bit values with a large offset
    ellipsePixels(width, height, p0, p1, (k) => { const d = data[k] - mean; ss += d * d; });
    const sd = Math.sqrt(ss / n);
    const rx = Math.abs(p1[0] - p0[0]) / 2, ry = Math.abs(p1[1] - p0[1]) / 2;
    const sp = spacing(meta);
    const area = sp ? { value: Math.PI * rx * ry * sp.row * sp.col, unit: "mm²" } : { value: Math.PI * rx * ry, unit: "px²" };
    const out = { count: n, area: area.value, areaUnit: area.unit, spacingNote: sp ? sp.note : "no pixel spacing",
      stored: { mean, sd, min, max } };
    const lut = modalityLut(meta);
    if (lut.applies) {
      const a = min * lut.slope + lut.intercept, b = max * lut.slope + lut.intercept;
      out.rescaled = { mean: mean * lut.slope + lut.intercept, sd: sd * Math.abs(lut.slope),
        min: Math.min(a, b), max: Math.max(a, b), unit: lut.unit };
    }
    return out;
  }

  // ---------------------------------------------------------------- labels

  const fmt = (v) => (Number.isInteger(v) ? String(v) : Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(2));

  function roiLines(s) {
    if (!s) return ["no pixels (colour image or empty region)"];
    const lines = [];
    if (s.rescaled) {
      const u = s.rescaled.unit ? ` ${s.rescaled.unit}` : " (rescaled)";
      lines.push(`Mean ${fmt(s.rescaled.mean)}${u}  SD ${fmt(s.rescaled.sd)}`);
      lines.push(`Min ${fmt(s.rescaled.min)}  Max ${fmt(s.rescaled.max)}`);
      lines.push(`Stored: mean ${fmt(s.stored.mean)}  SD ${fmt(s.stored.sd)}`);
    } else {
      lines.push(`Mean ${fmt(s.stored.mean)}  SD ${fmt(s.stored.sd)} (stored values)`);
      lines.push(`Min ${fmt(s.stored.min)}  Max ${fmt(s.stored.max)}`);
    }
    lines.push(`Area ${s.area.toFixed(1)} ${s.areaUnit} (${s.count} px)`);
    return lines;
  }

  // ---------------------------------------------------------------- the tools' state

  // frame key -> [measurement]; a measurement: {type, points, result, lines}
  const byFrame = new Map();
  const gestures = new WeakMap();    // viewport -> the drag under way
  const scales = new WeakMap();      // viewport -> canvas pixels per image pixel at its last paint
  let selected = null;               // {key, m}
  let pendingAngle = null;           // {key, points: [a, vertex]}: waiting for the third point

  function frameKey(vp) {
    const f = vp && vp.frame && vp.frame();
    if (!f) return null;
    return f.Key || `${f.Instance}/${f.Frame || 0}`;
  }
  function listOf(key) { return byFrame.get(key) || []; }
  function dpr() { return (typeof window !== "undefined" && window.devicePixelRatio) || 1; }
  /** image pixels per n CSS pixels on this viewport */
  function imagePx(vp, css) { return (css * dpr()) / (scales.get(vp) || 1); }

  function compute(m, meta, image) {
    if (m.type === "length") {
      m.result = length(m.points[0], m.points[1], meta);
      m.lines = [m.result.label];
    } else if (m.type === "angle") {
      const deg = angle(m.points[0], m.points[1], m.points[2], meta);
      m.result = { value: deg, unit: "°" };
      m.lines = [deg === null ? "—" : `${deg.toFixed(1)}°`];
    } else if (m.type === "roi") {
      m.result = ellipseStats(image, meta, m.points[0], m.points[1]);
      m.lines = roiLines(m.result);
    }
    return m;
  }

  function segDist(p, a, b) {
    const dx = b[0] - a[0], dy = b[1] - a[1], len2 = dx * dx + dy * dy;
    const t = len2 ? Math.min(Math.max(((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len2, 0), 1) : 0;
    return Math.hypot(p[0] - (a[0] + t * dx), p[1] - (a[1] + t * dy));
  }
  function distance(m, p) {
    const P = m.points;
    if (m.type === "length") return segDist(p, P[0], P[1]);
    if (m.type === "angle") return Math.min(segDist(p, P[0], P[1]), segDist(p, P[1], P[2]));
    const cx = (P[0][0] + P[1][0]) / 2, cy = (P[0][1] + P[1][1]) / 2;
    const rx = Math.max(Math.abs(P[1][0] - P[0][0]) / 2, 1e-6), ry = Math.max(Math.abs(P[1][1] - P[0][1]) / 2, 1e-6);
    const r = Math.hypot((p[0] - cx) / rx, (p[1] - cy) / ry);
    return r <= 1 ? 0 : (r - 1) * Math.min(rx, ry);   // inside counts: an easy target for a finger
  }
  function hit(key, p, tol) {
    let best = null, bestD = Infinity;
    for (const m of listOf(key)) {
      const d = distance(m, p);
      if (d <= tol && d < bestD) { best = m; bestD = d; }
    }
    return best;
  }

  function add(vp, key, m) {
    const list = listOf(key);
    if (list.length >= MAX_PER_FRAME) { notify(vp, `At most ${MAX_PER_FRAME} measurements on one image.`); return; }
    list.push(m);
    byFrame.set(key, list);
    selected = { key, m };
    say(m.lines.join(", "));
  }

  // the figures in words for a screen reader (the canvas has none): a live region off the screen
  function say(text) {
    if (typeof document === "undefined" || !document.body) return;
    let box = document.getElementById("measure-live");
    if (!box) {
      box = document.createElement("div");
      box.id = "measure-live";
      box.setAttribute("aria-live", "polite");
      box.style.cssText = "position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap;";
      document.body.appendChild(box);
    }
    box.textContent = text;
  }

  function notify(vp, text) { notice(text); }

  /** A short line over the viewer (the viewer's own notice hook when it has one). */
  function notice(text) {
    const V = typeof window !== "undefined" && window.PipacsViewer;
    if (V && typeof V.notice === "function") { V.notice(text); return; }
    if (typeof document === "undefined") return;
    let box = document.getElementById("tools-notice");
    if (!box) {
      box = document.createElement("div");
      box.id = "tools-notice";
      box.setAttribute("role", "status");
      box.style.cssText = "position:fixed;left:50%;top:3.2rem;transform:translateX(-50%);z-index:6;background:#2a2410;"
        + "border:1px solid #a88a2a;color:#fff;padding:.5rem .9rem;border-radius:8px;font-size:.95rem;max-width:80vw;"
        + "pointer-events:none;";
      document.body.appendChild(box);
    }
    box.textContent = text || "";
    box.hidden = !text;
    clearTimeout(notice.timer);
    if (text) notice.timer = setTimeout(() => { box.hidden = true; }, 8000);
  }

  // A gesture: the finger goes down at pt; moving more than a tap draws; lifting finishes it.
  function down(type, vp, pt) {
    const key = frameKey(vp);
    if (!key) return;
    if (pendingAngle && (pendingAngle.key !== key || type !== "angle")) pendingAngle = null;   // scrolled away, another tool: dropped
    const g = { type, key, start: clampPt(vp, pt), now: clampPt(vp, pt), dragging: false, third: false };
    if (type === "angle" && pendingAngle) { g.third = true; g.dragging = true; }
    gestures.set(vp, g);
    vp.redraw();
  }
  function move(vp, pt) {
    const g = gestures.get(vp);
    if (!g) return;
    g.now = clampPt(vp, pt);
    if (!g.dragging && Math.hypot(g.now[0] - g.start[0], g.now[1] - g.start[1]) >= imagePx(vp, TAP_CSS_PX)) g.dragging = true;
    if (g.dragging) vp.redraw();
  }
  function up(vp, pt) {
    const g = gestures.get(vp);
    gestures.delete(vp);
    if (!g) return;
    if (pt) g.now = clampPt(vp, pt);
    const key = frameKey(vp);
    if (key !== g.key) { vp.redraw(); return; }     // the frame changed under the finger
    const meta = vp.frame(), image = vp.image();
    if (g.third) {
      const m = compute({ type: "angle", points: [...pendingAngle.points, g.now] }, meta, image);
      pendingAngle = null;
      add(vp, key, m);
    } else if (!g.dragging) {                        // a tap: select what is under the finger
      const m = hit(key, g.start, imagePx(vp, HIT_CSS_PX));
      selected = m ? { key, m } : null;
    } else if (g.type === "angle") {
      pendingAngle = { key, points: [g.start, g.now] };   // the first arm; the next touch places the third point
      selected = null;
    } else if (g.type === "roi") {
      if (!image) notify(vp, "The image is not loaded yet: no region measured.");
      else add(vp, key, compute({ type: "roi", points: [g.start, g.now] }, meta, image));
    } else {
      add(vp, key, compute({ type: "length", points: [g.start, g.now] }, meta, image));
    }
    vp.redraw();
    changed();
  }
  function clampPt(vp, pt) {
    const img = vp.image && vp.image();
    const f = vp.frame && vp.frame();
    const W = img ? img.width : f && f.Columns, H = img ? img.height : f && f.Rows;
    if (!W || !H) return [pt[0], pt[1]];
    return [Math.min(Math.max(pt[0], 0), W), Math.min(Math.max(pt[1], 0), H)];
  }

  /** Deletes the selected measurement when it is on the frame vp shows (any frame without vp). */
  function deleteSelected(vp) {
    if (!selected || (vp && selected.key !== frameKey(vp))) return false;
    const list = listOf(selected.key);
    const i = list.indexOf(selected.m);
    if (i >= 0) list.splice(i, 1);
    if (!list.length) byFrame.delete(selected.key);
    selected = null;
    changed();
    return i >= 0;
  }
  /** The viewport shows another stack: what was being drawn there is dropped (the measurements stay
      with their frames and show again when the stack comes back). */
  function forget(vp) {
    gestures.delete(vp);
    pendingAngle = null;
  }
  function clearAll() {
    byFrame.clear();
    selected = null;
    pendingAngle = null;
    changed();
  }
  const listeners = [];
  function changed() { for (const fn of listeners) fn(); }

  // ---------------------------------------------------------------- drawing

  const paintedFor = new WeakMap();   // viewport -> the context it was drawn on in this paint

  /** Draws this frame's measurements (and the one being drawn) on vp; ctx maps 1 unit to 1 image
      pixel. Lines and labels are drawn in canvas pixels so they keep a readable size at any zoom. */
  function drawAll(vp, ctx) {
    const m0 = ctx.getTransform();
    const scale = Math.hypot(m0.a, m0.b) || 1;
    scales.set(vp, scale);
    const key = frameKey(vp);
    if (!key) return;
    const unit = dpr();
    const toCanvas = ([x, y]) => [m0.a * x + m0.c * y + m0.e, m0.b * x + m0.d * y + m0.f];
    const items = listOf(key).map(m => ({ m, sel: selected && selected.m === m }));
    // a second finger made the drag a pinch (the viewer zooms, and no up comes to us): the drag is dropped
    if (gestures.has(vp) && vp.pointers instanceof Map && vp.pointers.size !== 1) gestures.delete(vp);
    const g = gestures.get(vp);
    if (pendingAngle && pendingAngle.key === key) {
      const pts = g && g.third ? [...pendingAngle.points, g.now] : pendingAngle.points;
      items.push({ m: { type: pts.length === 3 ? "angle" : "arm", points: pts, lines: pts.length === 3 ? [] : ["tap the third point"] }, sel: true });
    }
    if (g && g.dragging && !g.third && g.key === key) {
      const type = g.type === "angle" ? "arm" : g.type;
      items.push({ m: { type, points: [g.start, g.now], lines: [] }, sel: true });
    }
    ctx.save();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.lineCap = "round"; ctx.lineJoin = "round";
    for (const { m, sel } of items) drawOne(ctx, m, m.points.map(toCanvas), unit, sel);
    ctx.restore();
  }

  function drawOne(ctx, m, P, unit, sel) {
    const color = sel ? SELECTED : COLOR;
    const stroke = (path, w) => {
      ctx.strokeStyle = SHADOW; ctx.lineWidth = (w + 2) * unit; ctx.beginPath(); path(); ctx.stroke();
      ctx.strokeStyle = color; ctx.lineWidth = w * unit; ctx.beginPath(); path(); ctx.stroke();
    };
    const w = sel ? 2.5 : 1.75;
    let anchor = null;
    if ((m.type === "length" || m.type === "arm") && P.length >= 2) {
      stroke(() => { ctx.moveTo(...P[0]); ctx.lineTo(...P[1]); }, w);
      for (const p of P) dot(ctx, p, unit, color);
      anchor = [Math.max(P[0][0], P[1][0]), (P[0][1] + P[1][1]) / 2];
    } else if (m.type === "angle" && P.length >= 3) {
      stroke(() => { ctx.moveTo(...P[0]); ctx.lineTo(...P[1]); ctx.lineTo(...P[2]); }, w);
      for (const p of P) dot(ctx, p, unit, color);
      anchor = P[1];
    } else if (m.type === "roi" && P.length >= 2) {
      const cx = (P[0][0] + P[1][0]) / 2, cy = (P[0][1] + P[1][1]) / 2;
      const rx = Math.max(Math.abs(P[1][0] - P[0][0]) / 2, 0.5), ry = Math.max(Math.abs(P[1][1] - P[0][1]) / 2, 0.5);
      stroke(() => ctx.ellipse(cx, cy, rx, ry, 0, 0, 2 * Math.PI), w);
      anchor = [cx + rx, cy - ry];
    }
    if (anchor && m.lines && m.lines.length) label(ctx, m.lines, anchor[0] + 10 * unit, anchor[1], unit, color);
  }
  function dot(ctx, p, unit, color) {
    ctx.fillStyle = SHADOW; ctx.beginPath(); ctx.arc(p[0], p[1], 4.5 * unit, 0, 2 * Math.PI); ctx.fill();
    ctx.fillStyle = color; ctx.beginPath(); ctx.arc(p[0], p[1], 3 * unit, 0, 2 * Math.PI); ctx.fill();
  }
  // text on a dark box, kept inside the canvas: readable over bone and over air
  function label(ctx, lines, x, y, unit, color) {
    const size = Math.round(14 * unit), lh = Math.round(18 * unit), pad = 4 * unit;
    ctx.font = `600 ${size}px system-ui, -apple-system, sans-serif`;
    ctx.textBaseline = "top";
    const w = Math.max(...lines.map(t => ctx.measureText(t).width)) + 2 * pad, h = lines.length * lh + 2 * pad;
    const W = ctx.canvas.width, H = ctx.canvas.height;
    if (x + w > W) x = Math.max(0, x - w - 20 * unit);
    y = Math.min(Math.max(y - h / 2, 0), Math.max(H - h, 0));
    ctx.fillStyle = BOX; ctx.fillRect(x, y, w, h);
    ctx.fillStyle = color;
    lines.forEach((t, k) => ctx.fillText(t, x + pad, y + pad + k * lh + (lh - size) / 2));
  }

  // ---------------------------------------------------------------- registration

  function visible(vp) {
    const key = frameKey(vp);
    return listOf(key).map(m => ({ type: m.type, points: m.points.map(p => [...p]), result: m.result, lines: [...m.lines],
      selected: !!(selected && selected.m === m) }));
  }

  function register(V) {
    // every tool is asked to draw after a paint: the measurements are drawn once per paint (the
    // viewer's paint hooks run after the tools' draws; without them, once per task)
    const hooks = typeof V.onPaint === "function";
    if (hooks) V.onPaint((vp) => paintedFor.delete(vp));
    const drawOnce = (vp, ctx) => {
      if (paintedFor.get(vp) === ctx) return;
      paintedFor.set(vp, ctx);
      if (!hooks) queueMicrotask(() => paintedFor.delete(vp));
      drawAll(vp, ctx);
    };
    const buttons = [];
    const measuring = () => !buttons.length || buttons.some(b => b.getAttribute("aria-pressed") === "true");
    for (const [name, label] of [["length", "Length"], ["roi", "ROI"], ["angle", "Angle"]]) {
      const button = V.addTool({
        name, label,
        down: (vp, pt) => down(name, vp, pt),
        move: (vp, pt) => move(vp, pt),
        up: (vp, pt) => up(vp, pt),
        draw: drawOnce,
        clear: (vp) => forget(vp),
      });
      if (button && button.nodeType === 1) buttons.push(button);
    }
    if (typeof V.addAction === "function") {
      const del = V.addAction({ name: "measure-delete", label: "Delete meas.", run: (vp) => {
        if (!deleteSelected(vp)) notice("Tap a measurement on this image first, then Delete.");
        redrawAll(V);
      } });
      const clear = V.addAction({ name: "measure-clear", label: "Clear meas.", run: () => { clearAll(); redrawAll(V); } });
      if (del && del.setAttribute) del.setAttribute("aria-label", "Delete the selected measurement");
      if (clear && clear.setAttribute) clear.setAttribute("aria-label", "Clear every measurement (they are not saved)");
    }
    if (typeof document !== "undefined") {
      document.addEventListener("keydown", (e) => {
        // only while a measurement tool is chosen: the same keys delete a case's annotation otherwise
        if ((e.key === "Delete" || e.key === "Backspace") && selected && measuring() && !/^(INPUT|TEXTAREA)$/.test((e.target && e.target.tagName) || "")) {
          e.preventDefault();
          deleteSelected(V.active ? V.active() : null);
          redrawAll(V);
        }
      });
    }
  }
  function redrawAll(V) { for (const vp of V.viewports || []) if (vp && vp.redraw) vp.redraw(); }

  const api = {
    MAX_PER_FRAME, spacing, length, angle, modalityLut, ellipsePixels, ellipseStats, roiLines,
    visible, deleteSelected, clearAll, drawAll, frameKey, notice,
    onChange(fn) { listeners.push(fn); },
    count() { let n = 0; for (const l of byFrame.values()) n += l.length; return n; },
    pending() { return pendingAngle ? pendingAngle.points.map(p => [...p]) : null; },
    drafting(vp) { return gestures.has(vp); },
  };
  if (typeof window !== "undefined") {
    window.PipacsMeasure = api;
    (window.PipacsPlugins = window.PipacsPlugins || []).push((V) => { register(V); api.registered = true; });
  }
  return api;
})();
