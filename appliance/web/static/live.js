/* pipacs live teaching session: the viewer following the teacher (/viewer/live?session=ID) or driving
   the class (&present=1). One WebSocket, /sessions/{id}/live (README "Teaching sessions"): the board
   sends the session and the presenter's view state; this page applies it through window.PipacsViewer
   (viewer.js) and answers the teacher's questions by POST /sessions/{id}/answers. The presenter sends
   its view (at most 30 messages a second, the last always sent), picks cases, asks, reveals and sees
   the answers arrive. Text from people (titles, prompts, choices, words, nicknames) is set with
   textContent only. */
"use strict";
(function () {
  const V = window.PipacsViewer;
  if (!V || !V.live) return;
  const Q = new URLSearchParams(location.search);
  const SID = Q.get("session");
  const PRESENT = Q.get("present") === "1";
  const PAGE = { "X-Requested-With": "pipacs" };
  const SEND_MS = 34;                     // the presenter's view: at most ~30 messages a second
  const BACKOFF_MS = 500, BACKOFF_MAX_MS = 10000;
  const POINTER_LINGER_MS = 2000;         // the teacher's pointer stays this long after the finger lifts
  const vp = V.viewports[0];

  // what the page knows; read by the browser tests (window.pipacsLive), handy when debugging
  const live = {
    role: null, you: null, connected: false, hellos: 0, seq: -1, state: null, session: null,
    detached: false, applied: 0, driving: null, caseIndex: null, pointer: null, summaries: {},
    sent: 0, answered: {}, ended: false, cases: {}, errors: [],
    // the tests' way to drop the connection (a Wi-Fi loss); held, it stays down until release()
    cut(hold) { if (hold) live.held = true; if (ws) ws.close(); },
    release() { live.held = false; if (!ws) { clearTimeout(retryTimer); retryTimer = null; connect(); } },
  };
  window.pipacsLive = live;
  let me = null;                          // /pipacs/session: role and the CSRF token of a teacher

  const h = V.h;                          // the viewer's element builder: text always as text nodes
  const $ = (id) => document.getElementById(id);

  async function request(method, url, body) {
    const headers = { ...PAGE, Accept: "application/json" };
    if (me && me.CSRF) headers["X-Pipacs-CSRF"] = me.CSRF;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    let j = null;
    try { j = await r.json(); } catch (e) { /* no JSON */ }
    if (!r.ok) { const err = new Error((j && (j.Message || j.Details)) || r.statusText); err.status = r.status; throw err; }
    return j;
  }
  const sessionUrl = (tail = "") => `/sessions/${encodeURIComponent(SID)}${tail}`;

  // ------------------------------------------------------------------ the page's parts

  const root = $("viewer");
  document.body.classList.add(PRESENT ? "live-presenter" : "live-follower");
  const banner = h("div", { id: "live-banner", role: "alert", hidden: true });
  const bar = h("div", { id: "live-bar", role: "status", "aria-live": "polite" },
    h("span", { id: "live-status" }, "Connecting…"),
    h("button", { type: "button", id: "live-follow", hidden: true, onclick: () => refollow() }, "Follow teacher"),
    h("button", { type: "button", id: "live-take", class: "live-primary", hidden: true, onclick: () => send({ type: "take" }) }, "Take over"),
    h("button", { type: "button", id: "live-panel-btn", hidden: !PRESENT, "aria-expanded": "true",
      onclick: () => {
        panel.hidden = !panel.hidden;
        $("live-panel-btn").setAttribute("aria-expanded", String(!panel.hidden));
        window.dispatchEvent(new Event("resize"));   // the image's stage is wider or narrower now
      } }, "Session"));
  const wait = h("div", { id: "live-wait", hidden: true });
  const question = h("div", { id: "live-question", role: "region", "aria-label": "The teacher's question", hidden: true });
  const reveal = h("div", { id: "live-reveal", role: "region", "aria-label": "The answer", hidden: true });
  const toast = h("div", { id: "live-toast", role: "status", hidden: true });
  const panel = h("aside", { id: "live-panel", "aria-label": "Teaching session", hidden: !PRESENT });
  const join = h("div", { id: "live-join", role: "dialog", "aria-label": "Join this session", hidden: true });
  root.insertBefore(bar, $("stages"));
  root.insertBefore(banner, bar);
  root.append(wait, question, reveal, toast, panel, join);

  let toastTimer = null;
  function say(text) {
    toast.textContent = text;
    toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { toast.hidden = true; }, 5000);
  }

  // ------------------------------------------------------------------ the channel

  let ws = null, attempt = 0, retryTimer = null, gotHello = false, pongTimer = null;
  function wsUrl() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    return `${proto}//${location.host}${sessionUrl("/live")}${PRESENT ? "?as=presenter" : ""}`;
  }
  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (live.ended) return;
    gotHello = false;
    let sock;
    try { sock = new WebSocket(wsUrl()); } catch (e) { retry(); return; }
    ws = sock;
    sock.onmessage = (ev) => {
      if (sock !== ws) return;
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (m && typeof m === "object") safely(() => handle(m));
    };
    sock.onclose = () => {
      if (sock !== ws) return;
      ws = null;
      live.connected = false;
      clearTimeout(pongTimer);
      if (!live.ended) closed();
    };
  }
  function send(m) {
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(m));
    live.sent++;
    return true;
  }
  function safely(fn) { try { return fn(); } catch (e) { console.error(e); return undefined; } }

  // refused before the upgrade (no seat, the session gone or ended) looks like any lost connection:
  // the session document says which
  async function closed() {
    if (!gotHello) {
      try {
        const r = await fetch(sessionUrl(), { headers: { ...PAGE, Accept: "application/json" } });
        if (r.status === 404) { gone(); return; }
        if (r.ok) { const doc = await r.json(); if (doc.State === "ended") { endedScreen(); return; } }
      } catch (e) { /* the board is out of reach: keep trying */ }
    }
    showBanner("Connection to the board lost: reconnecting…");
    retry();
  }
  function retry() {
    if (retryTimer || live.ended) return;
    if (live.held) { retryTimer = setTimeout(() => { retryTimer = null; retry(); }, 200); return; }
    const base = Math.min(BACKOFF_MS * 2 ** attempt, BACKOFF_MAX_MS);
    attempt++;
    const delay = Math.min(base * (0.75 + Math.random() * 0.5), BACKOFF_MAX_MS);   // jitter: thirty iPads waking do not come back at once
    live.retryMs = Math.round(delay);
    retryTimer = setTimeout(connect, delay);
  }
  // a Wi-Fi back or an iPad woken: try at once, and check that a socket still open still answers
  window.addEventListener("online", () => {
    if (live.ended) return;
    if (!ws) { attempt = 0; connect(); }
    resendUnsent();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.hidden || live.ended) return;
    if (!ws) { attempt = 0; connect(); return; }
    const sock = ws;
    if (send({ type: "ping", t: Date.now() })) {
      clearTimeout(pongTimer);
      pongTimer = setTimeout(() => { if (ws === sock) sock.close(); }, 4000);
    }
  });

  function showBanner(text) { banner.textContent = text; banner.hidden = !text; }

  function gone() {
    live.ended = true;
    showWait([h("h2", {}, "You are not in this session"),
      h("p", {}, "It may have ended or been deleted, or you have not joined it on this device."),
      h("p", {}, h("a", { href: "/join", class: "live-big-link" }, "Join a session"))]);
    showBanner("");
  }
  function endedScreen() {
    live.ended = true;
    showBanner("");
    question.hidden = true;
    showWait([h("h2", {}, "The session has ended"), h("p", {}, "Thank you. You may close this page."),
      h("p", {}, h("a", { href: "/", class: "live-big-link" }, "Back to the explorer"))]);
    if (ws) ws.close();
  }

  function handle(m) {
    switch (m.type) {
      case "hello": {
        gotHello = true;
        attempt = 0;
        live.connected = true;
        live.hellos++;
        live.you = m.you || {};
        live.role = live.you.role;
        live.driving = !!live.you.driving;
        showBanner("");
        live.seq = -1;                           // a new connection (maybe a restarted board): its numbering
        setSession(m.session);
        onState(m.state, m.seq, true);
        resendUnsent();
        if (PRESENT) presenterHello();
        break;
      }
      case "state": onState(m.state, m.seq, false); break;
      case "session": setSession(m.session); caseChanged(); renderAll(); break;
      case "answers":
        live.summaries[`${m.case}/${m.question}`] = m.summary;
        renderAnswers();
        break;
      case "driver":
        live.driving = !!m.driving;
        live.driverBy = m.by || null;
        renderPanel();
        if (live.driving) sendView();
        break;
      case "ended": endedScreen(); break;
      case "error":
        live.errors.push(m.code);
        if (m.code === "not-driving") { live.driving = false; renderPanel(); }   // the strip offers Take over
        else if (m.code !== "too-fast") say(m.message || "The board refused that.");
        break;
      case "pong": clearTimeout(pongTimer); break;
      default: break;
    }
  }

  // ------------------------------------------------------------------ session and view state

  function setSession(doc) {
    if (!doc) return;
    live.session = doc;
    V.setTitle(doc.Title || "Teaching session");
  }
  const st = () => live.state || {};
  const revealedNow = (n) => n !== null && n !== undefined &&
    ((live.session && (live.session.Revealed || []).includes(n)) || (st().Case === n && st().Revealed === true));

  function onState(s, seq, resync) {
    if (!s || typeof s !== "object") return;
    if (!resync && typeof seq === "number" && seq <= live.seq) return;   // latest wins, never out of order
    if (typeof seq === "number") live.seq = seq;
    const before = live.state;
    live.state = s;
    if (s.Asked !== undefined && live.session) live.session.Asked = s.Asked;
    if (s.SessionState && live.session) live.session.State = s.SessionState;
    if (s.Revealed === true && live.session && s.Case !== null && !(live.session.Revealed || []).includes(s.Case)) {
      live.session.Revealed = [...(live.session.Revealed || []), s.Case];
    }
    // the presenter that drives is the source of the view: its own echoes are not applied
    // a driving presenter back after a lost connection keeps what it shows, and sends it
    const resume = PRESENT && live.driving && resync && live.hellos > 1 && vp.seriesId && live.caseIndex !== null;
    const apply = !resume && (!PRESENT || !live.driving || resync);
    if (resume) { lastSent = -1e9; sendView(); }
    else if (apply && !live.detached && (!pausedNow() || !vp.seriesId)) follow(s);
    else if (!PRESENT && live.detached) showStatus();
    if (!before || before.Case !== s.Case || before.Revealed !== s.Revealed) caseChanged();
    // the panels are made again only when what they show changed (not at each scroll step)
    const meta = JSON.stringify([s.Case, s.Asked, s.Revealed, s.SessionState, !!s.Series]);
    if (meta !== lastMeta || resync) { lastMeta = meta; renderAll(); } else showStatus();
  }
  let lastMeta = null;
  // paused by the teacher: a follower keeps the image it shows (and its own hand on it) until the start
  const pausedNow = () => !PRESENT && ((live.session && live.session.State) || st().SessionState) === "paused";
  let wasPaused = false;
  function pauseChanged() {
    const now = pausedNow();
    if (wasPaused && !now && !live.detached && live.state) follow(live.state);   // started again: where the teacher is
    wasPaused = now;
  }

  // ------------------------------------------------------------------ following

  let opening = null;
  async function follow(s) {
    const key = tapTarget();
    if (key === undefined) return;               // the key image's place is being looked up: followed then
    if (key) s = { ...s, Series: key.series, Image: key.index };
    if (!s.Series) return;
    if (vp.seriesId !== s.Series) {
      if (opening === s.Series) return;          // applied when it is open (the latest state then)
      const series = opening = s.Series;
      live.pointer = null;
      let ok = false;
      try { ok = await V.openSeries(vp, series, { index: Math.max(0, s.Image | 0) }); } finally { if (opening === series) opening = null; }
      if (!ok) return;   // the viewer says why on the image (or a newer series is being opened)
      if (live.detached && !PRESENT) return;
      const k = tapTarget();
      s = k ? { ...live.state, Series: k.series, Image: k.index } : live.state;
      if (!s || s.Series !== vp.seriesId) { if (s && s.Series) follow(live.state); return; }
    }
    V.setView(vp, { window: s.Window || null, zoom: s.Zoom ?? 1, center: s.Center || null });
    // the teacher's pointer is on the teacher's image: not drawn over the tap question's key image
    live.pointer = Array.isArray(s.Pointer) && !tapTarget() ? s.Pointer : null;
    if (vp.index !== (s.Image | 0)) V.goTo(vp, s.Image | 0);
    else { vp.redraw(); V.prefetch(vp); }
    if (PRESENT && s.Case !== null && s.Case !== undefined) live.caseIndex = s.Case;
    live.applied++;
    showStatus();
  }

  // a tap question asked: a seated follower answers on its key image (its series and place in the stack),
  // whatever the teacher shows. null: no tap question (follow the teacher); undefined: being looked up.
  const keyPlaces = new Map();   // "instance/frame" -> {series, index} | {series, index: -1} (not in the stack)
  function keyImageOf(aq) {
    if (!aq || aq.q.Type !== "tap") return null;
    const entry = (live.session.Cases || [])[aq.caseIndex];
    const doc = entry && live.cases[entry.Case];
    if (!doc) { caseDoc(aq.caseIndex).then(d => { if (d && live.state && !live.detached) follow(live.state); }); return undefined; }
    const ki = (doc.KeyImages || [])[aq.q.KeyImage || 0];
    return ki && ki.Instance ? { instance: ki.Instance, frame: Math.max(1, Number(ki.Frame) || 1) } : null;
  }
  function tapTarget() {
    if (PRESENT || !live.you || !live.you.participant) return null;
    const ki = keyImageOf(askedQuestion());
    if (!ki) return ki;
    const id = `${ki.instance}/${ki.frame}`;
    const i = vp.frames.findIndex(f => f.id === ki.instance && (f.frame | 0) + 1 === ki.frame);
    if (i >= 0) { keyPlaces.set(id, { series: vp.seriesId, index: i }); return keyPlaces.get(id); }
    const known = keyPlaces.get(id);
    if (known) {
      if (known.missing) return null;                  // not in its own series' stack: the teacher's image
      if (known.series !== vp.seriesId) return known;  // its series: opened, then its place found
      known.missing = true;
      return null;
    }
    if (!keyPlaces.has(`${id}?`)) {
      keyPlaces.set(`${id}?`, true);
      request("GET", `/instances/${encodeURIComponent(ki.instance)}`).then(inst => {
        keyPlaces.set(id, { series: inst.ParentSeries, index: 0 });
      }, () => keyPlaces.set(id, { series: null, index: -1, missing: true }))
        .finally(() => { if (live.state && !live.detached) follow(live.state); });
    }
    return undefined;
  }
  function onKeyImage() {   // the image shown is the asked tap question's key image (or there is none to find)
    const k = tapTarget();
    return !k || (k.series === vp.seriesId && k.index === vp.index);
  }

  function detach() {
    if (live.detached || PRESENT) return;
    live.detached = true;
    live.pointer = null;
    vp.redraw();
    showStatus();
  }
  function refollow() {
    live.detached = false;
    showStatus();
    if (live.state) follow(live.state);
  }

  V.onViewChange((v, { byUser }) => {
    if (v !== vp || !byUser) return;
    if (PRESENT) sendView();
    else if (st().Series) detach();
  });

  function showStatus() {
    const s = st(), doc = live.session || {};
    let text;
    if (PRESENT) {
      text = live.driving ? "Presenting: the class follows you" : "Another teacher is driving";
    } else if (live.detached) text = "Detached: you are scrolling on your own";
    else if (doc.State === "paused" || s.SessionState === "paused") text = "Paused by the teacher";
    else if (tapTarget()) text = "The question's key image";
    else if (s.Series) text = "Following the teacher";
    else text = "Waiting for the teacher";
    if (live.you && live.you.nickname) text += ` · ${live.you.nickname}`;
    $("live-status").textContent = text;
    $("live-follow").hidden = PRESENT || !live.detached;
    $("live-take").hidden = !PRESENT || !live.connected || !!live.driving;
    bar.classList.toggle("detached", live.detached);
  }

  // the teacher's pointer (and a student's own tap, waiting to be sent) drawn over the image
  V.onPaint((v) => {
    if (v !== vp || !v.map) return;
    const g = v.ctx, m = v.map, dpr = window.devicePixelRatio || 1;
    const dot = (p, fill, r) => {
      g.save();
      g.setTransform(1, 0, 0, 1, 0, 0);
      g.beginPath();
      g.arc(m.ox + p[0] * m.scale, m.oy + p[1] * m.scale, r * dpr, 0, 2 * Math.PI);
      g.fillStyle = fill; g.fill();
      g.lineWidth = 2 * dpr; g.strokeStyle = "#fff"; g.stroke();
      g.restore();
    };
    if (live.pointer && !live.detached) dot(live.pointer, "rgba(255,40,40,0.85)", 9);
    if (tapDraft) dot(tapDraft, "rgba(40,160,255,0.9)", 10);
  });

  // ------------------------------------------------------------------ waiting screen

  function showWait(children) {
    wait.replaceChildren(h("div", { class: "live-wait-box" }, children));
    wait.hidden = false;
  }
  function renderWait() {
    if (live.ended) return;
    const doc = live.session, s = st();
    const state = (doc && doc.State) || s.SessionState;
    const waiting = !PRESENT && doc && (state === "ready" || (!s.Series && state !== "ended"));
    if (!waiting) { wait.hidden = true; return; }
    const parts = [h("h2", {}, doc.Title || "Teaching session"),
      h("p", {}, state === "ready" ? "Waiting for the teacher to start." : "Waiting for the teacher's first image.")];
    if (doc.Code) {   // the projector (a teacher's page following): how the room joins
      const url = `${location.origin}/join?code=${doc.Code}`;
      parts.push(h("p", { class: "live-code", id: "live-wait-code" }, doc.Code),
        h("img", { class: "live-qr", alt: `QR code of ${url}`, src: `/pipacs/qr.svg?text=${encodeURIComponent(url)}` }),
        h("p", { class: "live-url" }, url));
    }
    if (live.you && live.you.nickname) parts.push(h("p", {}, "You joined as ", h("strong", {}, live.you.nickname), "."));
    showWait(parts);
  }

  // ------------------------------------------------------------------ questions (followers)

  let qKey = null, tapDraft = null, unsent = null, picked = null;   // picked: a multiple choice's choices, not sent yet
  function askedQuestion() {
    const doc = live.session, asked = doc && doc.Asked;
    if (!asked || doc.State !== "live") return null;
    const entry = (doc.Cases || [])[asked.Case];
    const q = entry && (entry.Questions || []).find(x => x.ID === asked.Question);
    if (!q || revealedNow(asked.Case)) return null;
    return { caseIndex: asked.Case, q };
  }
  function myAnswer(caseIndex, qid) {
    const k = `${caseIndex}/${qid}`;
    if (k in live.answered) return live.answered[k];
    const you = live.session && live.session.You;
    const row = you && (you.Answers || []).filter(a => a.Case === caseIndex && a.Question === qid).pop();
    return row ? row.Answer : undefined;
  }
  function answerText(q, a) {
    if (a === undefined) return "";
    if (q.Type === "choice" && Array.isArray(a)) return a.map(i => (q.Choices || [])[i] ?? `#${i + 1}`).join(", ");
    if (q.Type === "tap" && Array.isArray(a)) return `a spot at ${Math.round(a[0])}, ${Math.round(a[1])}`;
    return String(a);
  }

  function renderQuestion() {
    if (PRESENT) return;
    const aq = live.role === "follower" && live.you && live.you.participant ? askedQuestion() : null;
    if (!aq) {
      const was = qKey;
      question.hidden = true; qKey = null; picked = null;
      endTapMode();
      if (was && !live.detached && live.state && !pausedNow()) follow(live.state);   // the teacher's image again
      return;
    }
    const key = `${aq.caseIndex}/${aq.q.ID}`;
    if (key === qKey && !question.hidden) { renderMine(aq); return; }   // keep what is being typed
    qKey = key;
    endTapMode();
    picked = null;
    const { q, caseIndex } = aq;
    if (!live.detached && live.state && !pausedNow()) follow(live.state);   // a tap question: to its key image
    const body = [h("p", { class: "live-prompt", id: "live-prompt" }, q.Prompt || "")];
    if (q.Type === "text") {
      const box = h("textarea", { id: "live-text", maxlength: "500", rows: "2", "aria-label": "Your answer", autocapitalize: "sentences" });
      body.push(box, h("button", { type: "button", id: "live-send", class: "live-primary",
        onclick: () => { const t = box.value.trim(); if (t) answer(caseIndex, q, t.slice(0, 500)); } }, "Send"));
    } else if (q.Type === "choice" && q.Multiple === true) {
      // several choices may be right: picked on and off, then sent together as one answer
      const mine = myAnswer(caseIndex, q.ID);
      picked = new Set(Array.isArray(mine) ? mine : []);
      body.push(h("p", { class: "live-hint" }, "Pick every choice that applies, then Send."),
        h("div", { class: "live-choices" }, (q.Choices || []).map((c, i) =>
          h("button", { type: "button", class: "live-choice", "data-choice": String(i),
            onclick: () => { if (picked.has(i)) picked.delete(i); else picked.add(i); renderMine(aq); } }, c))),
        h("button", { type: "button", id: "live-send-choices", class: "live-primary",
          onclick: () => { if (picked.size) answer(caseIndex, q, [...picked].sort((a, b) => a - b)); else say("Pick at least one choice."); } }, "Send"));
    } else if (q.Type === "choice") {
      body.push(h("div", { class: "live-choices" }, (q.Choices || []).map((c, i) =>
        h("button", { type: "button", class: "live-choice", "data-choice": String(i), onclick: () => answer(caseIndex, q, [i]) }, c))));
    } else if (q.Type === "tap") {
      body.push(h("p", { class: "live-hint", id: "live-tap-hint" }, "Tap the finding on the image."),
        h("div", { class: "live-row" },
          h("button", { type: "button", id: "live-tap-confirm", class: "live-primary", hidden: true,
            onclick: () => { if (tapDraft) answer(caseIndex, q, tapDraft.map(v => Math.round(v * 10) / 10)); } }, "Send this spot"),
          h("button", { type: "button", id: "live-tap-again", hidden: true,
            onclick: () => { tapDraft = null; vp.redraw(); renderMine(aq); } }, "Tap again")));
      V.setTool("tool:answer-tap");
    }
    body.push(h("p", { class: "live-mine", id: "live-mine" }));
    question.replaceChildren(h("div", { class: "live-q-head" }, "Question"), ...body);
    question.hidden = false;
    renderMine(aq);
  }
  function endTapMode() {   // the image's finger back to scrolling, the unsent spot gone
    if (window.viewerState && window.viewerState.tool === "tool:answer-tap") V.setTool("scroll");
    if (tapDraft) { tapDraft = null; vp.redraw(); }
  }
  function renderMine(aq) {
    const a = myAnswer(aq.caseIndex, aq.q.ID);
    $("live-mine").textContent = a === undefined ? "" : `Sent: ${answerText(aq.q, a)}. You may change it until the teacher reveals the case.`;
    for (const b of question.querySelectorAll(".live-choice")) {
      const i = Number(b.dataset.choice);
      b.setAttribute("aria-pressed", String(picked ? picked.has(i) : Array.isArray(a) && a.includes(i)));
    }
    const c = $("live-tap-confirm");
    if (c) {
      c.hidden = !tapDraft; $("live-tap-again").hidden = !tapDraft;
      $("live-tap-hint").textContent = tapDraft ? "Is this the spot? Send it, or tap again." : "Tap the finding on the image.";
    }
  }

  // the answer tool: a tap on the image marks a spot (sent after the confirm), nothing else moves
  if (!PRESENT) {
    const b = V.addTool({
      name: "answer-tap", label: "Answer",
      up(v, pt) {
        if (v !== vp || !v.map || !qKey) return;
        if (!onKeyImage()) {
          const k = tapTarget();
          // said in the question's panel (a toast would cover the Follow teacher button)
          const hint = $("live-tap-hint");
          if (hint) hint.textContent = `Tap on the question's key image: image ${k ? k.index + 1 : "?"} of its series. Follow teacher goes back to it.`;
          return;
        }
        tapDraft = [Math.min(Math.max(pt[0], 0), v.map.width), Math.min(Math.max(pt[1], 0), v.map.height)];
        const aq = askedQuestion();
        if (aq) renderMine(aq);
      },
    });
    b.hidden = true;   // chosen by the question, not by hand
  }

  async function answer(caseIndex, q, value) {
    const body = { Case: caseIndex, Question: q.ID, Answer: value };
    unsent = body;
    try {
      await request("POST", sessionUrl("/answers"), body);
      unsent = null;
      live.answered[`${caseIndex}/${q.ID}`] = value;
      if (q.Type === "tap") { tapDraft = null; vp.redraw(); }
      const aq = askedQuestion();
      if (aq) renderMine(aq);
    } catch (e) {
      if (e.status) { unsent = null; say(e.message); }   // refused: the board says why
      else say("Not sent: no connection to the board. It is sent again when the connection is back.");
    }
  }
  function resendUnsent() {   // one answer per question on the board: a resend replaces, never doubles
    const u = unsent;
    if (!u || PRESENT) return;
    const aq = askedQuestion();
    if (aq && aq.caseIndex === u.Case && aq.q.ID === u.Question) answer(u.Case, aq.q, u.Answer);
    else unsent = null;
  }

  // ------------------------------------------------------------------ the case and its reveal

  let caseShown = null, revealShown = null;
  async function caseDoc(n, fresh) {
    const entry = live.session && (live.session.Cases || [])[n];
    if (!entry) return null;
    if (!fresh && live.cases[entry.Case]) return live.cases[entry.Case];
    if (!fresh && loadingCase.has(entry.Case)) return loadingCase.get(entry.Case);
    const p = request("GET", `/cases/${encodeURIComponent(entry.Case)}`)
      .then(doc => { live.cases[entry.Case] = doc; return doc; }, () => live.cases[entry.Case] || null)
      .finally(() => { if (loadingCase.get(entry.Case) === p) loadingCase.delete(entry.Case); });
    loadingCase.set(entry.Case, p);
    return p;
  }
  const loadingCase = new Map();   // case ID -> its GET under way (one at a time)
  async function caseChanged() {
    const n = st().Case;
    if (n === null || n === undefined) { reveal.hidden = true; V.setCase(null); return; }
    const known = live.session && live.session.Mode === "known";
    const shown = revealedNow(n);
    const key = `${n}/${shown}`;
    if (caseShown === key) return;
    caseShown = key;
    const doc = await caseDoc(n, shown);   // read again at the reveal: the board now gives the answer
    if (st().Case !== n) return;
    if (doc && (shown || known)) {
      try { if (doc.Unknown) sessionStorage.setItem(`pipacs-revealed:${doc.ID}`, "1"); } catch (e) { /* private mode */ }
      V.setCase(doc);
    } else V.setCase(null);
    if (PRESENT) renderPanel();
    renderReveal(shown ? doc : null, n);
  }
  function renderReveal(doc, n) {
    if (!doc) { reveal.hidden = true; revealShown = null; return; }
    revealShown = n;
    const field = (label, text) => (text ? h("div", { class: "live-field" }, h("h3", {}, label), h("p", {}, text)) : null);
    reveal.replaceChildren(...[
      h("div", { class: "live-q-head" }, "Revealed",
        h("button", { type: "button", class: "live-close", "aria-label": "Hide the answer", onclick: () => { reveal.hidden = true; } }, "✕")),
      h("h2", { id: "live-case-title" }, doc.Title || ""),
      field("Findings", doc.Findings), field("Diagnosis", doc.Diagnosis),
      field("Differential diagnosis", doc.DifferentialDiagnosis), field("Teaching points", doc.TeachingPoints),
    ].filter(Boolean));   // replaceChildren would show a null as the text "null"
    reveal.hidden = false;
  }

  function renderAll() {
    renderWait();
    renderQuestion();
    pauseChanged();
    showStatus();
    if (PRESENT) renderPanel();
  }

  // ------------------------------------------------------------------ the presenter

  let lastSent = -1e9, sendTimer = null, pointerTimer = null;
  function sendView() {
    if (!PRESENT || !live.driving || opening || live.caseIndex === null || !vp.seriesId) return;
    const now = performance.now(), gap = SEND_MS - (now - lastSent);
    if (gap > 0) {   // within the throttle: the view as it is then goes when it ends
      if (!sendTimer) sendTimer = setTimeout(() => { sendTimer = null; sendView(); }, gap);
      return;
    }
    lastSent = now;
    send({ type: "view", Case: live.caseIndex, ...V.getView(vp), Pointer: live.pointer });
  }

  async function openCase(n) {
    const entry = live.session && (live.session.Cases || [])[n];
    if (!entry || entry.Missing) return;
    const doc = await caseDoc(n, false);
    if (!doc || !(doc.Studies || []).length) { say("This case has no study to show."); return; }
    let series = null;
    try { series = await V.firstSeriesOf(doc.Studies[0]); } catch (e) { say(`Cannot open the case: ${e.message}`); return; }
    if (!series) { say("This case's study holds no series."); return; }
    live.caseIndex = n;
    live.pointer = null;
    opening = series;
    try { await V.openSeries(vp, series, { index: 0 }); } finally { opening = null; }
    sendView();
    renderPanel();
  }

  async function presenterHello() {
    const s = st();
    if (s.Case !== null && s.Case !== undefined) live.caseIndex = s.Case;
    if (live.driving && (s.Case === null || s.Case === undefined) && (live.session.Cases || []).length) await openCase(0);
    renderPanel();
  }

  if (PRESENT) {
    V.addTool({
      name: "pointer", label: "Point",
      down(v, pt) { clearTimeout(pointerTimer); live.pointer = pt; v.redraw(); sendView(); },
      move(v, pt) { live.pointer = pt; sendView(); },
      up(v) {
        clearTimeout(pointerTimer);
        pointerTimer = setTimeout(() => { live.pointer = null; v.redraw(); sendView(); }, POINTER_LINGER_MS);
      },
    });
  }

  async function act(method, url, body) {
    try {
      const doc = await request(method, url, body);
      if (doc && doc.ID === SID && doc.Cases) { setSession(doc); renderAll(); }
      return doc;
    } catch (e) { say(e.message); return null; }
  }

  function caseTitle(n) {
    const entry = live.session.Cases[n];
    const doc = live.cases[entry.Case];
    if (entry.Missing) return "(deleted case)";
    return doc ? doc.Title || "(untitled)" : "…";
  }

  function renderPanel() {
    if (!PRESENT || !live.session) return;
    const doc = live.session, cases = doc.Cases || [], n = live.caseIndex;
    for (let k = 0; k < cases.length; k++) {
      if (!live.cases[cases[k].Case] && !cases[k].Missing && !loadingCase.has(cases[k].Case)) caseDoc(k).then(d => { if (d) renderPanel(); });
    }
    const parts = [];
    parts.push(h("div", { class: "live-p-head" },
      h("h2", {}, doc.Title || "Teaching session"),
      h("p", { id: "live-p-state" }, `${doc.State}${doc.Mode === "unknown" ? " · unknown cases" : " · known cases"} · ${doc.Participants || 0} joined`)));
    if (me && me.Role === "teacher" && me.CanSignIn === false) {
      parts.push(h("p", { class: "live-warn" }, "Sign-in is off: every device is a teacher, so nothing is held back from the room."));
    }
    const row = [];
    if (doc.State === "ready" || doc.State === "paused") row.push(h("button", { type: "button", id: "live-start", class: "live-primary", onclick: () => act("POST", sessionUrl("/start")) }, doc.State === "ready" ? "Start" : "Resume"));
    if (doc.State === "live") row.push(h("button", { type: "button", id: "live-pause", onclick: () => act("POST", sessionUrl("/pause")) }, "Pause"));
    row.push(h("button", { type: "button", id: "live-join-btn", onclick: () => showJoin(true) }, doc.Code ? `Join code ${doc.Code}` : "Join code"));
    parts.push(h("div", { class: "live-row" }, row));
    if (!live.driving) {
      parts.push(h("p", { class: "live-warn", id: "live-driving" },
        `Another teacher is driving${live.driverBy ? ` (${live.driverBy})` : ""}: this page follows them. Take over (above) to drive.`));
    }
    // the cases, in the session's order
    parts.push(h("div", { class: "live-row" },
      h("button", { type: "button", id: "live-prev", disabled: !(n > 0), onclick: () => openCase(n - 1) }, "◀ Previous"),
      h("span", { id: "live-case-no" }, n === null || n === undefined ? `${cases.length} cases` : `Case ${n + 1} of ${cases.length}`),
      h("button", { type: "button", id: "live-next", disabled: !(n === null || n === undefined || n < cases.length - 1), onclick: () => openCase(n === null || n === undefined ? 0 : n + 1) }, "Next ▶")));
    parts.push(h("ol", { class: "live-cases", id: "live-cases" }, cases.map((c, k) =>
      h("li", {}, h("button", { type: "button", "data-case": String(k), "aria-current": k === n ? "true" : null, disabled: !!c.Missing,
        onclick: () => openCase(k) }, `${caseTitle(k)}${(doc.Revealed || []).includes(k) ? " ✓" : ""}`)))));
    if (n !== null && n !== undefined && cases[n]) {
      const entry = cases[n], revealed = (doc.Revealed || []).includes(n);
      const qs = entry.Questions || [];
      parts.push(h("h3", {}, "Questions"));
      if (!qs.length) parts.push(h("p", { class: "live-hint" }, "This case has no question."));
      for (const q of qs) {
        const asked = doc.Asked && doc.Asked.Case === n && doc.Asked.Question === q.ID;
        parts.push(h("div", { class: "live-pq" + (asked ? " asked" : "") },
          h("p", {}, `${q.Type}: `, q.Prompt || ""),
          asked ? h("button", { type: "button", id: "live-close-q", onclick: () => act("POST", sessionUrl("/close-question")) }, "Close question")
            : h("button", { type: "button", class: "live-ask", "data-question": q.ID, disabled: revealed || doc.State !== "live",
              onclick: () => act("POST", sessionUrl(`/cases/${n}/questions/${encodeURIComponent(q.ID)}/ask`)) }, "Ask")));
      }
      parts.push(h("div", { id: "live-answers" }));
      parts.push(h("button", { type: "button", id: "live-reveal-btn", class: "live-primary", disabled: revealed,
        onclick: () => act("POST", sessionUrl(`/cases/${n}/reveal`)) }, revealed ? "Revealed ✓" : "Reveal"));
    }
    panel.replaceChildren(...parts);
    renderAnswers();
    showStatus();
  }

  // the asked question's answers (or the case's last asked one), as the board counts them
  let resultsAsked = null;
  function currentQuestionKey() {
    const doc = live.session, n = live.caseIndex;
    if (doc.Asked && doc.Asked.Case === n) return `${n}/${doc.Asked.Question}`;
    const keys = Object.keys(live.summaries).filter(k => k.startsWith(`${n}/`));
    return keys.length ? keys[keys.length - 1] : null;
  }
  function renderAnswers() {
    const box = $("live-answers");
    if (!box || !live.session) return;
    const key = currentQuestionKey();
    if (!key) { box.replaceChildren(); return; }
    const sum = live.summaries[key];
    if (!sum) {
      if (resultsAsked !== key) {   // asked before this page opened: the board's results so far
        resultsAsked = key;
        request("GET", sessionUrl("/results")).then(r => {
          for (const q of (r && r.Questions) || []) {
            const k = `${q.Case}/${q.Question}`;
            if (!live.summaries[k]) live.summaries[k] = q;
          }
          renderAnswers();
        }).catch(() => {});
      }
      box.replaceChildren(h("p", { class: "live-hint" }, "No answer yet."));
      return;
    }
    const parts = [h("p", { id: "live-answered" }, `Answered: ${sum.Answered || 0}`)];
    if (sum.Type === "choice") {
      const counts = sum.Counts || [], most = Math.max(1, ...counts);
      const entry = live.session.Cases[sum.Case] || {};
      const q = (entry.Questions || []).find(x => x.ID === sum.Question) || {};
      parts.push(h("div", { class: "live-bars" }, counts.map((c, i) => {
        const fill = h("span", { class: "live-bar-fill" + ((sum.Correct || []).includes(i) ? " correct" : "") });
        fill.style.width = `${Math.round((100 * c) / most)}%`;
        return h("div", { class: "live-bar", "data-choice": String(i) },
          h("span", { class: "live-bar-label" }, (q.Choices || [])[i] ?? `#${i + 1}`),
          h("span", { class: "live-bar-track" }, fill), h("span", { class: "live-bar-count" }, String(c)));
      })));
    } else if (sum.Type === "text") {
      parts.push(h("ul", { class: "live-words" }, (sum.Words || []).slice(0, 30).map(w =>
        h("li", {}, h("span", {}, w.Word), h("span", { class: "live-bar-count" }, String(w.Count))))));
    } else if (sum.Type === "tap") {
      parts.push(heatMap(sum));
      if (sum.InsideShare !== null && sum.InsideShare !== undefined) {
        parts.push(h("p", {}, `Inside the region: ${sum.Inside} (${Math.round(sum.InsideShare * 100)}%)`));
      }
    }
    box.replaceChildren(...parts);
  }

  // the taps over the key image (its preview), with the teacher's region
  function heatMap(sum) {
    const k = sum.KeyImage || {};
    // the key image's size in pixels: the board's, else the frame decoded here, else its preview's
    let W = Number(k.Columns) || 0, H = Number(k.Rows) || 0;
    if (!(W && H) && k.Instance) {
      const i = vp.frames.findIndex(f => f.id === k.Instance && f.frame + 1 === (Number(k.Frame) || 1));
      const img = i >= 0 ? vp.cache.get(i) : null;
      if (img) { W = img.width; H = img.height; }
    }
    const sized = !!(W && H);
    if (!sized) { W = 512; H = 512; }
    const c = h("canvas", { class: "live-heat", id: "live-heat", width: String(W), height: String(H), "aria-label": `${(sum.Taps || []).length} taps` });
    const g = c.getContext("2d");
    const paint = (img) => {
      if (img && !sized && img.naturalWidth && (c.width !== img.naturalWidth || c.height !== img.naturalHeight)) {
        c.width = W = img.naturalWidth; c.height = H = img.naturalHeight;
      }
      g.fillStyle = "#000"; g.fillRect(0, 0, W, H);
      if (img) g.drawImage(img, 0, 0, W, H);
      const r = Math.max(W, H) / 40;
      for (const [x, y] of sum.Taps || []) {
        const grad = g.createRadialGradient(x, y, 0, x, y, r * 2);
        grad.addColorStop(0, "rgba(255,60,0,0.55)"); grad.addColorStop(1, "rgba(255,60,0,0)");
        g.fillStyle = grad; g.fillRect(x - r * 2, y - r * 2, r * 4, r * 4);
      }
      const reg = sum.Region;
      if (reg && Array.isArray(reg.Points) && reg.Points.length >= 2) {
        g.strokeStyle = "#3cf"; g.lineWidth = Math.max(W, H) / 200;
        g.beginPath();
        const p = reg.Points;
        if (reg.Type === "ellipse") {
          const [a, b] = p;
          g.ellipse((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, Math.abs(b[0] - a[0]) / 2, Math.abs(b[1] - a[1]) / 2, 0, 0, 2 * Math.PI);
        } else if (reg.Type === "rectangle") {
          const [a, b] = p;
          g.rect(Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]));
        } else { g.moveTo(p[0][0], p[0][1]); for (const q of p.slice(1)) g.lineTo(q[0], q[1]); g.closePath(); }
        g.stroke();
      }
    };
    paint(null);
    if (k.Instance) {
      const src = `/instances/${encodeURIComponent(k.Instance)}/frames/${Math.max((Number(k.Frame) || 1) - 1, 0)}/preview`;
      let img = previews.get(src);
      if (!img) { img = new Image(); img.src = src; previews.set(src, img); }
      if (img.complete && img.naturalWidth) paint(img);
      else img.addEventListener("load", () => paint(img), { once: true });
    }
    return c;
  }
  const previews = new Map();   // the key images' previews, fetched once

  function showJoin(open) {
    const doc = live.session;
    if (!open || !doc || !doc.Code) { join.hidden = true; return; }
    const url = `${location.origin}/join?code=${doc.Code}`;
    join.replaceChildren(h("div", { class: "live-wait-box" },
      h("h2", {}, doc.Title || "Join the session"),
      h("p", {}, "Open this address, or scan the code, then type the code and a nickname:"),
      h("p", { class: "live-code", id: "live-join-code" }, doc.Code),
      h("img", { class: "live-qr", id: "live-join-qr", alt: `QR code of ${url}`, src: `/pipacs/qr.svg?text=${encodeURIComponent(url)}` }),
      h("p", { class: "live-url" }, url),
      h("button", { type: "button", id: "live-join-close", class: "live-primary", onclick: () => showJoin(false) }, "Close")));
    join.hidden = false;
  }

  // ------------------------------------------------------------------ start

  (async () => {
    if (!SID) return;
    try {
      const r = await fetch("/pipacs/session", { headers: { ...PAGE, Accept: "application/json" } });
      if (r.ok) me = await r.json();
    } catch (e) { /* the channel says who we are */ }
    if (PRESENT && me && me.Role !== "teacher") {
      showWait([h("h2", {}, "Only the teacher presents"), h("p", {}, h("a", { href: `/viewer/live?session=${encodeURIComponent(SID)}`, class: "live-big-link" }, "Follow the session"))]);
      return;
    }
    connect();
  })();
})();
