/* pipacs key-image annotations: drawing, hit testing and lengths, shared by the viewer and the
   explorer's case page. Points are in image pixel coordinates (PS3.3 GSPS "PIXEL" units:
   x = column, y = row, (0,0) the top-left corner of the top-left pixel); the caller gives the
   mapping to the canvas. Text is drawn with fillText: never parsed as HTML. */
"use strict";

const Annot = (() => {
  const COLOR = "#ffd54f", SELECTED = "#4fc3f7", SHADOW = "rgba(0,0,0,.85)";
  const TYPES = ["arrow", "ellipse", "text", "length"];
  const MAX_PER_IMAGE = 100;   // the contract's limit: at most 100 annotations a key image

  // Pixel Spacing (0028,0030) is "row spacing \ column spacing": rows are y, columns x.
  // Imager Pixel Spacing (0018,1164) measures at the detector, not in the patient: said so.
  function spacingOf(pixelSpacing, imagerSpacing) {
    const ok = (v) => Array.isArray(v) && v.length >= 2 && v.every(x => Number.isFinite(Number(x)) && Number(x) > 0);
    if (ok(pixelSpacing)) return { row: Number(pixelSpacing[0]), col: Number(pixelSpacing[1]), note: "" };
    if (ok(imagerSpacing)) return { row: Number(imagerSpacing[0]), col: Number(imagerSpacing[1]), note: "at the detector (Imager Pixel Spacing)" };
    return null;
  }

  function lengthMm(points, spacing) {
    if (!spacing || !points || points.length < 2) return null;
    const dx = (points[1][0] - points[0][0]) * spacing.col, dy = (points[1][1] - points[0][1]) * spacing.row;
    return Math.hypot(dx, dy);
  }

  // The label of a length: the board's figure once saved (LengthMm / LengthNote), else ours.
  function lengthLabel(a, spacing) {
    let mm = typeof a.LengthMm === "number" ? a.LengthMm : null;
    let note = a.LengthNote || "";
    if (mm === null && !("LengthMm" in a)) {
      mm = lengthMm(a.Points, spacing);
      note = spacing ? spacing.note : "";
    }
    if (mm !== null) return `${mm.toFixed(1)} mm${note && /Imager/.test(note) ? " (at the detector)" : ""}`;
    const px = Math.hypot(a.Points[1][0] - a.Points[0][0], a.Points[1][1] - a.Points[0][1]);
    return `${px.toFixed(0)} px (no pixel spacing)`;
  }

  // The annotations in words, for a picture's alternative text (a screen reader, a broken image).
  function describe(annotations) {
    return (annotations || []).map(a => a.Type === "text" ? `label "${a.Text || ""}"`
      : a.Type === "length" ? `length ${lengthLabel(a, null)}` : a.Type).join("; ");
  }

  // What the board stores: the read-only figures it adds on save are left out of what we send.
  function forSaving(a) {
    const out = { Type: a.Type, Points: a.Points.map(([x, y]) => [round(x), round(y)]) };
    out.Text = a.Text || "";
    return out;
  }
  // Center ([x, y] image pixels, the displayed centre) only when set: null and absent mean the frame's centre
  function keyImageForSaving(k) {
    const out = { Instance: k.Instance, Frame: k.Frame || 1, Window: k.Window || null, Zoom: k.Zoom ?? null,
      Caption: k.Caption || "", Annotations: (k.Annotations || []).map(forSaving) };
    if (Array.isArray(k.Center) && k.Center.length === 2) out.Center = k.Center.map(round);
    return out;
  }
  function round(v) { return Math.round(v * 100) / 100; }

  function clampPoint(p, width, height) {
    return [Math.min(Math.max(p[0], 0), width), Math.min(Math.max(p[1], 0), height)];
  }

  // Draw every annotation. map: {scale, ox, oy} (canvas = o + image * scale); unit: canvas pixels
  // per CSS pixel (devicePixelRatio or a thumbnail's shrink), so lines keep a readable width.
  function drawAll(ctx, annotations, map, opts = {}) {
    const unit = opts.unit || 1;
    ctx.save();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.lineCap = "round"; ctx.lineJoin = "round";
    (annotations || []).forEach((a, k) => drawOne(ctx, a, map, unit, k === opts.selected, opts.spacing));
    ctx.restore();
  }

  function drawOne(ctx, a, map, unit, selected, spacing) {
    const P = (a.Points || []).map(([x, y]) => [map.ox + x * map.scale, map.oy + y * map.scale]);
    const color = selected ? SELECTED : COLOR;
    const stroke = (path, width) => {
      ctx.strokeStyle = SHADOW; ctx.lineWidth = (width + 2) * unit; path(); ctx.stroke();
      ctx.strokeStyle = color; ctx.lineWidth = width * unit; path(); ctx.stroke();
    };
    const label = (text, x, y) => {
      ctx.font = `600 ${Math.round(15 * unit)}px system-ui, -apple-system, sans-serif`;
      ctx.textBaseline = "middle";
      ctx.lineWidth = 4 * unit; ctx.strokeStyle = SHADOW; ctx.strokeText(text, x, y);
      ctx.fillStyle = color; ctx.fillText(text, x, y);
    };
    const w = selected ? 3 : 2;
    if ((a.Type === "arrow" || a.Type === "length") && P.length >= 2) {
      const [[x0, y0], [x1, y1]] = P;
      stroke(() => { ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); }, w);
      const ang = Math.atan2(y1 - y0, x1 - x0);
      if (a.Type === "arrow") {
        const h = 14 * unit;
        stroke(() => {
          ctx.beginPath();
          ctx.moveTo(x1 - h * Math.cos(ang - 0.45), y1 - h * Math.sin(ang - 0.45));
          ctx.lineTo(x1, y1);
          ctx.lineTo(x1 - h * Math.cos(ang + 0.45), y1 - h * Math.sin(ang + 0.45));
        }, w);
      } else {
        const t = 6 * unit, nx = -Math.sin(ang) * t, ny = Math.cos(ang) * t;
        stroke(() => {
          ctx.beginPath();
          ctx.moveTo(x0 - nx, y0 - ny); ctx.lineTo(x0 + nx, y0 + ny);
          ctx.moveTo(x1 - nx, y1 - ny); ctx.lineTo(x1 + nx, y1 + ny);
        }, w);
        label(lengthLabel(a, spacing), (x0 + x1) / 2 + 10 * unit, (y0 + y1) / 2 - 10 * unit);
      }
    } else if (a.Type === "ellipse" && P.length >= 2) {
      const [[x0, y0], [x1, y1]] = P;
      const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2, rx = Math.abs(x1 - x0) / 2, ry = Math.abs(y1 - y0) / 2;
      stroke(() => { ctx.beginPath(); ctx.ellipse(cx, cy, Math.max(rx, 0.5), Math.max(ry, 0.5), 0, 0, 2 * Math.PI); }, w);
    } else if (a.Type === "text" && P.length >= 1) {
      const [[x, y]] = P;
      ctx.fillStyle = color;
      ctx.beginPath(); ctx.arc(x, y, 3 * unit, 0, 2 * Math.PI); ctx.fill();
      label(a.Text || "", x + 6 * unit, y);
    }
  }

  // The annotation under an image point (tolerance in image pixels), or -1.
  function hit(annotations, p, tol) {
    let best = -1, bestD = Infinity;
    (annotations || []).forEach((a, k) => {
      const d = distance(a, p, tol);
      if (d <= tol && d < bestD) { best = k; bestD = d; }
    });
    return best;
  }

  function distance(a, [x, y], tol) {
    const P = a.Points || [];
    if ((a.Type === "arrow" || a.Type === "length") && P.length >= 2) return segDist(x, y, P[0], P[1]);
    if (a.Type === "ellipse" && P.length >= 2) {
      const cx = (P[0][0] + P[1][0]) / 2, cy = (P[0][1] + P[1][1]) / 2;
      const rx = Math.max(Math.abs(P[1][0] - P[0][0]) / 2, 1e-6), ry = Math.max(Math.abs(P[1][1] - P[0][1]) / 2, 1e-6);
      const r = Math.hypot((x - cx) / rx, (y - cy) / ry);
      return r <= 1 ? 0 : (r - 1) * Math.min(rx, ry);   // inside counts: an easy target for a finger
    }
    if (a.Type === "text" && P.length >= 1) {
      const width = (a.Text || "").length * tol * 0.5 + tol;   // roughly the label's extent to the right
      const dx = x < P[0][0] ? P[0][0] - x : Math.max(0, x - P[0][0] - width);
      return Math.hypot(dx, y - P[0][1]);
    }
    return Infinity;
  }

  function segDist(x, y, [x0, y0], [x1, y1]) {
    const dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
    const t = len2 ? Math.min(Math.max(((x - x0) * dx + (y - y0) * dy) / len2, 0), 1) : 0;
    return Math.hypot(x - (x0 + t * dx), y - (y0 + t * dy));
  }

  return { TYPES, MAX_PER_IMAGE, spacingOf, lengthMm, lengthLabel, describe, forSaving, keyImageForSaving, clampPoint, drawAll, hit };
})();
