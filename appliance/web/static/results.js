/* A teaching session's results (/app/results.html?session=ID), for the teacher: per question the
   choices' counts as bars, free text as a grouped word list, taps as a heat map over the key image
   with the region they are counted in and the share inside; then every nickname's answers, and the
   CSV. GET /sessions/{id}/results (the board groups and counts), the session for the choices' texts,
   the CSV for the per-nickname table. Drawn again when the teacher taps Refresh. */
"use strict";

(() => {
  const { el, api, message } = Kit;
  const main = document.getElementById("main");
  const sessionId = new URLSearchParams(location.search).get("session") || "";
  const enc = encodeURIComponent(sessionId);

  // RFC 4180 (quotes doubled, fields may hold commas and line breaks); the BOM the board puts first for Excel
  function parseCsv(text) {
    const rows = [];
    let row = [], cell = "", quoted = false;
    const s = text.replace(/^\uFEFF/, "");
    for (let i = 0; i < s.length; i++) {
      const ch = s[i];
      if (quoted) {
        if (ch === '"' && s[i + 1] === '"') { cell += '"'; i++; } else if (ch === '"') quoted = false; else cell += ch;
      } else if (ch === '"') quoted = true;
      else if (ch === ",") { row.push(cell); cell = ""; }
      else if (ch === "\n" || ch === "\r") {
        if (ch === "\r" && s[i + 1] === "\n") i++;
        row.push(cell); rows.push(row); row = []; cell = "";
      } else cell += ch;
    }
    if (cell || row.length) { row.push(cell); rows.push(row); }
    return rows;
  }
  // a cell the board guarded against CSV injection ('=1+1): shown as the student typed it
  const unguard = (v) => (/^'[=+\-@\t\r]/.test(v) ? v.slice(1) : v);

  const pct = (x) => `${Math.round(100 * x)}%`;

  function choiceBars(q, question) {
    const counts = q.Counts || [];
    const total = counts.reduce((a, b) => a + b, 0);
    const texts = q.Choices || (question && question.Choices) || [];
    const correct = new Set(q.Correct || []);
    return el("div", { class: "bars", role: "list" }, counts.flatMap((n, i) => [
      el("span", { class: "choice-text", role: "listitem" }, texts[i] || `Choice ${i + 1}`, correct.has(i) ? " ✓" : ""),
      el("div", { class: "bar", "aria-hidden": "true" }, el("div", { class: correct.has(i) ? "correct" : "",
        style: `width:${total ? (100 * n / total).toFixed(1) : 0}%` })),
      el("span", { class: "count", "data-count": i }, String(n))]));
  }

  function wordList(q) {
    const words = q.Words || [];
    if (!words.length) return el("p", { class: "muted" }, "No answer yet.");
    return el("table", { class: "words" }, el("thead", {}, el("tr", {}, el("th", {}, "Answer"), el("th", {}, "How many"))),
      el("tbody", {}, words.map(w => el("tr", {}, el("td", {}, w.Word), el("td", { class: "count" }, String(w.Count))))));
  }

  // The region the taps are counted in, as a path in canvas pixels (s: image pixels -> canvas).
  function regionPath(g, region, s) {
    const pts = (region && region.Points) || [];
    g.beginPath();
    if (region.Type === "polygon" && pts.length >= 3) {
      g.moveTo(pts[0][0] * s, pts[0][1] * s);
      for (const p of pts.slice(1)) g.lineTo(p[0] * s, p[1] * s);
      g.closePath();
      return true;
    }
    if (pts.length !== 2) return false;
    const [[ax, ay], [bx, by]] = pts;
    const x0 = Math.min(ax, bx) * s, y0 = Math.min(ay, by) * s, w = Math.abs(bx - ax) * s, h = Math.abs(by - ay) * s;
    if (region.Type === "ellipse") g.ellipse(x0 + w / 2, y0 + h / 2, w / 2, h / 2, 0, 0, 2 * Math.PI);
    else g.rect(x0, y0, w, h);
    return true;
  }

  // Taps as a heat map: each tap a Gaussian of about 3% of the image's side, summed, coloured from
  // transparent blue through yellow to red over the frame; the region outlined; each tap a small dot.
  function heatMap(q) {
    const ki = q.KeyImage || {};
    const cols = ki.Columns || 512, rows = ki.Rows || 512;
    const scale = Math.min(1, 640 / Math.max(cols, rows)) * Math.max(1, 320 / Math.max(cols, rows));
    const W = Math.max(1, Math.round(cols * scale)), H = Math.max(1, Math.round(rows * scale));
    const canvas = el("canvas", { width: W, height: H, class: "heat-canvas", "data-taps": (q.Taps || []).length,
      "aria-label": `Heat map of ${(q.Taps || []).length} taps over the key image` });
    const g = canvas.getContext("2d");
    g.fillStyle = "#000";
    g.fillRect(0, 0, W, H);
    const overlay = () => {
      const taps = q.Taps || [];
      if (taps.length) {
        const sigma = Math.max(W, H) * 0.03, r = Math.ceil(sigma * 3);
        const heat = new Float32Array(W * H);
        let top = 0;
        for (const [x, y] of taps) {
          const cx = x * scale, cy = y * scale;
          for (let py = Math.max(0, Math.floor(cy - r)); py < Math.min(H, Math.ceil(cy + r)); py++) {
            for (let px = Math.max(0, Math.floor(cx - r)); px < Math.min(W, Math.ceil(cx + r)); px++) {
              const d2 = (px + 0.5 - cx) ** 2 + (py + 0.5 - cy) ** 2;
              const v = (heat[py * W + px] += Math.exp(-d2 / (2 * sigma * sigma)));
              if (v > top) top = v;
            }
          }
        }
        const layer = g.createImageData(W, H);
        for (let i = 0; i < heat.length; i++) {
          const t = heat[i] / top;
          if (t < 0.02) continue;
          // blue -> yellow -> red as the taps pile up
          const [cr, cg, cb] = t < 0.5 ? [255 * 2 * t, 255 * 2 * t, 255 * (1 - 2 * t)] : [255, 255 * (2 - 2 * t), 0];
          layer.data.set([cr, cg, cb, Math.round(90 + 140 * t)], i * 4);
        }
        const tmp = document.createElement("canvas");
        tmp.width = W; tmp.height = H;
        tmp.getContext("2d").putImageData(layer, 0, 0);
        g.globalAlpha = 0.75;
        g.drawImage(tmp, 0, 0);
        g.globalAlpha = 1;
        g.fillStyle = "#fff";
        for (const [x, y] of taps) { g.beginPath(); g.arc(x * scale, y * scale, 2, 0, 2 * Math.PI); g.fill(); }
      }
      if (q.Region && regionPath(g, q.Region, scale)) {
        g.lineWidth = 5; g.strokeStyle = "#000"; g.stroke();
        g.lineWidth = 2.5; g.strokeStyle = "#00e5ff"; g.stroke();
      }
      canvas.dataset.drawn = "1";
    };
    if (ki.Instance) {
      const img = new Image();
      img.onload = () => { g.drawImage(img, 0, 0, W, H); overlay(); };
      img.onerror = overlay;      // no picture (a frame the board cannot show): the taps on black
      img.src = `/instances/${encodeURIComponent(ki.Instance)}/frames/${Math.max(0, (ki.Frame || 1) - 1)}/rendered`;
    } else overlay();
    const share = q.InsideShare === null || q.InsideShare === undefined
      ? (q.Region ? "" : "No region is marked: taps are not counted as right or wrong.")
      : `${q.Inside} of ${(q.Taps || []).length} taps inside the region (${pct(q.InsideShare)}).`;
    return [el("div", { class: "heat" }, canvas), share ? el("p", { class: "inside-share" }, share) : null];
  }

  function questionCard(q, k, doc) {
    const entry = doc && doc.Cases && doc.Cases[q.Case];
    const question = entry && (entry.Questions || []).find(x => x.ID === q.Question);
    let body;
    if (q.Type === "choice") body = choiceBars(q, question);
    else if (q.Type === "text") body = wordList(q);
    else body = heatMap(q);
    return el("section", { class: "card q-result", "data-question": `${q.Case}:${q.Question}`, "data-type": q.Type },
      el("h3", {}, `Case ${q.Case + 1}${q.CaseTitle ? ` (${q.CaseTitle})` : ""} · ${q.Prompt || "(no question text)"}`),
      el("p", { class: "muted answered" }, `${q.Answered} answer${q.Answered === 1 ? "" : "s"}`), body);
  }

  // everyone's answers, one row a nickname, one column a question
  function perNickname(res, csvText) {
    const rows = parseCsv(csvText);
    if (rows.length < 2) return el("p", { class: "muted" }, "No answer yet.");
    const head = rows[0];
    const col = (name) => head.indexOf(name);
    const [ci, qi, ni, ai, ki, ii] = ["case", "question", "nickname", "answer", "correct", "inside"].map(col);
    const cells = new Map();    // nickname -> "case:question" -> [answer, correct]
    for (const r of rows.slice(1)) {
      if (r.length < head.length) continue;
      const nick = unguard(r[ni]);
      if (!cells.has(nick)) cells.set(nick, new Map());
      // right or wrong: a choice against the ticked ones, a tap against its region (yes/no; empty: not marked)
      cells.get(nick).set(`${r[ci]}:${unguard(r[qi])}`, [unguard(r[ai]), r[ki] || (ii >= 0 ? r[ii] : "")]);
    }
    const nicks = [...new Set([...(res.Participants || []), ...cells.keys()])];
    const qs = res.Questions || [];
    // the CSV's case column: the case's number as the teacher sees it (1…) or its index (0…): both looked up
    const find = (m, q) => m.get(`${q.Case + 1}:${q.Question}`) || m.get(`${q.Case}:${q.Question}`);
    return el("div", { class: "table-scroll" }, el("table", { class: "per-nickname", id: "per-nickname" },
      el("thead", {}, el("tr", {}, el("th", {}, "Nickname"), qs.map(q => el("th", { title: q.Prompt || "" }, `C${q.Case + 1} ${q.Question}`)))),
      el("tbody", {}, nicks.map(n => el("tr", { "data-nickname": n }, el("td", {}, n), qs.map(q => {
        const a = cells.has(n) ? find(cells.get(n), q) : null;
        if (!a) return el("td", { class: "muted" }, "—");
        const mark = /^(yes|true|1)$/i.test(a[1]) ? " ✓" : /^(no|false|0)$/i.test(a[1]) ? " ✗" : "";
        return el("td", {}, a[0], mark);
      }))))));
  }

  async function draw() {
    const out = el("div", { id: "results-body" });
    const refresh = el("button", { id: "results-refresh", class: "secondary", onclick: () => draw() }, "Refresh");
    const csv = el("a", { class: "button", id: "results-csv", href: `/sessions/${enc}/results.csv`, download: "" }, "Download CSV");
    delete main.dataset.view;
    try {
      const [res, doc, csvText] = await Promise.all([api("GET", `/sessions/${enc}/results`), api("GET", `/sessions/${enc}`),
        fetch(`/sessions/${enc}/results.csv`, { headers: { "X-Requested-With": "pipacs" } }).then(r => (r.ok ? r.text() : ""))]);
      document.title = `Results: ${res.Title || "session"}`;
      out.replaceChildren(
        el("p", {}, `${(res.Participants || []).length} joined · ${(res.Questions || []).length} question${(res.Questions || []).length === 1 ? "" : "s"} · `,
          el("span", { class: `tag state-${doc.State}` }, doc.State)),
        ...(res.Questions || []).length ? res.Questions.map((q, k) => questionCard(q, k, doc))
          : [el("div", { class: "card" }, el("p", {}, "This session has no question."))],
        el("div", { class: "card" }, el("h3", {}, "Answers by nickname"), perNickname(res, csvText)));
      main.replaceChildren(el("h2", {}, `Results: ${res.Title || "(untitled session)"}`),
        el("div", { class: "actions" }, refresh, csv, el("a", { class: "button secondary", href: "/app/sessions.html#/" }, "Sessions")), out);
    } catch (e) {
      main.replaceChildren(el("h2", {}, "Results"), el("div", { class: "card" },
        message("err", e.status === 404 ? "This session does not exist any more (it may have been deleted)."
          : e.status === 401 || e.status === 403 ? "The results are the teacher's: sign in as the teacher." : e.message),
        el("div", { class: "actions" }, refresh, el("a", { class: "button secondary", href: "/app/sessions.html#/" }, "Sessions"))));
    }
    main.dataset.view = "results";
  }

  Promise.all([Kit.loadWho(), Kit.appName()]).then(() => {
    const w = Kit.who();
    document.getElementById("account").replaceChildren(el("span", { id: "signed-in-as" },
      w.Role === "teacher" ? (w.CanSignIn ? ["Signed in as ", el("strong", {}, w.User || "teacher")] : "Teacher") : "Not the teacher"));
    draw();
  });
})();
