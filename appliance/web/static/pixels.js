/* pipacs: a frame's stored values from /pipacs/instances/{id}/frames/{n}/pixels.
 *
 *   PipacsPixels.fetchFrame(url, {signal}) -> Promise<{width, height, channels, data}>
 *
 * data holds the stored values (Int16Array, Uint16Array, Int8Array or Uint8Array), row-major,
 * channels interleaved (RGB for colour); the viewer applies slope/intercept and the window.
 * Nothing else in the pages knows the wire format (appliance/imaging/framecodec.py, "PXF1"):
 * the body arrives deflated with Content-Encoding, which the browser undoes itself; here the
 * 16-byte header is read, the byte planes joined, the zigzag undone and the MED predictor of
 * JPEG-LS run backwards, one pass over typed arrays (a 512x512 CT frame in a few ms).
 * A stored baseline JPEG comes as image/jpeg: the browser's own decoder gives its values.
 */
(function () {
  "use strict";

  const TYPES = {1: Uint8Array, 2: Int8Array, 3: Uint16Array, 4: Int16Array, 5: Uint32Array, 6: Int32Array};
  const HEADER = 16;
  const PREDICT_MED = 1;
  const SUBTRACT_GREEN = 1;

  // The signed residuals of every sample: byte planes joined, zigzag undone (0,1,2,3 -> 0,-1,1,-2).
  function residuals(bytes, total, nbytes) {
    const r = new Int32Array(total);
    const b0 = bytes.subarray(HEADER, HEADER + total);
    if (nbytes === 1) {
      for (let k = 0; k < total; k++) { const z = b0[k]; r[k] = (z >>> 1) ^ -(z & 1); }
    } else if (nbytes === 2) {
      const b1 = bytes.subarray(HEADER + total, HEADER + 2 * total);
      for (let k = 0; k < total; k++) { const z = b0[k] | (b1[k] << 8); r[k] = (z >>> 1) ^ -(z & 1); }
    } else {
      const b1 = bytes.subarray(HEADER + total), b2 = bytes.subarray(HEADER + 2 * total);
      const b3 = bytes.subarray(HEADER + 3 * total);
      for (let k = 0; k < total; k++) {
        const z = b0[k] | (b1[k] << 8) | (b2[k] << 16) | (b3[k] << 24);
        r[k] = (z >>> 1) ^ -(z & 1);
      }
    }
    return r;
  }

  // One channel plane back from its residuals (from base in res): the MED predictor of JPEG-LS
  // run in the encoder's order. The typed array wraps each sum to the sample type, as the encoder
  // wrapped the residual.
  function unpredict(plane, res, base, w, h, predictor) {
    const n = w * h;
    if (predictor !== PREDICT_MED) {
      for (let k = 0; k < n; k++) plane[k] = res[base + k];
      return;
    }
    if (!n) return;
    plane[0] = res[base];
    for (let x = 1; x < w; x++) plane[x] = plane[x - 1] + res[base + x];
    for (let y = 1; y < h; y++) {
      const row = y * w;
      plane[row] = plane[row - w] + res[base + row];
      for (let k = row + 1, end = row + w; k < end; k++) {
        const a = plane[k - 1], b = plane[k - w], c = plane[k - w - 1];
        let p;
        if (a < b) p = c >= b ? a : (c <= a ? b : a + b - c);
        else p = c >= a ? b : (c <= b ? a : a + b - c);
        plane[k] = p + res[base + k];
      }
    }
  }

  function decodePxf(bytes) {
    if (bytes.length < HEADER || bytes[0] !== 0x50 || bytes[1] !== 0x58 || bytes[2] !== 0x46 || bytes[3] !== 0x31) {
      throw new Error("not a pipacs frame (PXF1)");
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const T = TYPES[bytes[4]];
    const predictor = bytes[5], channels = bytes[6], colour = bytes[7];
    const width = view.getUint32(8, true), height = view.getUint32(12, true);
    if (!T || !channels) throw new Error("unknown sample type in a pipacs frame");
    const n = width * height, bits = T.BYTES_PER_ELEMENT * 8;
    const total = n * channels;
    if (bytes.length < HEADER + total * T.BYTES_PER_ELEMENT) throw new Error("a pipacs frame cut short");
    const res = residuals(bytes, total, T.BYTES_PER_ELEMENT);
    if (channels === 1) {
      const data = new T(n);
      unpredict(data, res, 0, width, height, predictor);
      return {width, height, channels, data};
    }
    const planes = [];
    for (let ch = 0; ch < channels; ch++) {
      const plane = new T(n);
      unpredict(plane, res, ch * n, width, height, predictor);
      planes.push(plane);
    }
    const data = new T(total);
    if (colour === SUBTRACT_GREEN && channels === 3) {
      const g = planes[0], dr = planes[1], db = planes[2];
      const offset = (T === Int8Array || T === Int16Array || T === Int32Array) ? 0 : 2 ** (bits - 1);
      for (let k = 0, j = 0; k < n; k++, j += 3) {
        const gk = g[k];
        data[j] = dr[k] + gk - offset;
        data[j + 1] = gk;
        data[j + 2] = db[k] + gk - offset;
      }
    } else {
      for (let k = 0; k < n; k++) {
        for (let ch = 0; ch < channels; ch++) data[k * channels + ch] = planes[ch][k];
      }
    }
    return {width, height, channels, data};
  }

  // The number of components of a JPEG (its SOF marker): 1 for grey, 3 for colour.
  function jpegComponents(bytes) {
    let i = 2;
    while (i + 9 < bytes.length) {
      if (bytes[i] !== 0xFF) { i++; continue; }
      const marker = bytes[i + 1];
      if (marker >= 0xC0 && marker <= 0xCF && marker !== 0xC4 && marker !== 0xC8 && marker !== 0xCC) {
        return bytes[i + 9];
      }
      if (marker === 0xD8 || marker === 0x01 || (marker >= 0xD0 && marker <= 0xD7) || marker === 0xFF) { i += 2; continue; }
      i += 2 + ((bytes[i + 2] << 8) | bytes[i + 3]);
    }
    return 3;
  }

  async function bitmapOf(blob) {
    if (typeof createImageBitmap === "function") {
      try {
        return await createImageBitmap(blob, {colorSpaceConversion: "none", premultiplyAlpha: "none"});
      } catch (e) { /* an older browser without the options: the <img> path below */ }
    }
    const url = URL.createObjectURL(blob);
    try {
      const img = new Image();
      img.src = url;
      await img.decode();
      return img;
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  async function decodeJpeg(buffer) {
    const bytes = new Uint8Array(buffer);
    const comps = jpegComponents(bytes);
    const bmp = await bitmapOf(new Blob([bytes], {type: "image/jpeg"}));
    const width = bmp.width, height = bmp.height;
    const canvas = typeof OffscreenCanvas === "function" ? new OffscreenCanvas(width, height)
      : Object.assign(document.createElement("canvas"), {width, height});
    const ctx = canvas.getContext("2d", {willReadFrequently: true});
    ctx.drawImage(bmp, 0, 0);
    if (bmp.close) bmp.close();
    const rgba = ctx.getImageData(0, 0, width, height).data;
    const channels = comps === 1 ? 1 : 3;
    const data = new Uint8Array(width * height * channels);
    for (let k = 0, j = 0; k < width * height; k++, j += 4) {
      if (channels === 1) {
        data[k] = rgba[j];
      } else {
        data[3 * k] = rgba[j]; data[3 * k + 1] = rgba[j + 1]; data[3 * k + 2] = rgba[j + 2];
      }
    }
    return {width, height, channels, data};
  }

  async function inflated(bytes) {
    // the server deflates with Content-Encoding, which the browser undoes; a body that reached us
    // still deflated (a proxy that dropped the header) is inflated here where the browser can
    if (bytes[0] === 0x78 && typeof DecompressionStream === "function") {
      const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
      return new Uint8Array(await new Response(stream).arrayBuffer());
    }
    return bytes;
  }

  async function fetchFrame(url, options) {
    const signal = options && options.signal;
    // X-Requested-With: as every request of the pages, so that a refusal brings no browser login dialog
    const resp = await fetch(url, {signal, credentials: "same-origin", headers: {"X-Requested-With": "pipacs"}});
    if (!resp.ok) {
      let message = resp.status + " " + resp.statusText;
      try { message = (await resp.json()).Message || message; } catch (e) { /* not JSON */ }
      const err = new Error(message);
      err.status = resp.status;
      throw err;
    }
    const type = resp.headers.get("Content-Type") || "";
    const buffer = await resp.arrayBuffer();
    if (type.startsWith("image/jpeg")) return decodeJpeg(buffer);
    return decodePxf(await inflated(new Uint8Array(buffer)));
  }

  window.PipacsPixels = {fetchFrame, decodePxf, decodeJpeg};
})();
