/* The teacher's teaching sessions (/app/sessions.html): the list with each session's state buttons,
   and the editor: title, mode, the cases in order (picked from the teaching cases), and each case's
   questions (free text, multiple choice, tap the finding on the key image, with the region the
   taps are counted against). Everything through the REST routes under /sessions; user text only
   ever through text nodes. #/ is the list, #/new a new session, #/edit/ID one to change. */
"use strict";

(() => {
  const { el, api, message } = Kit;
  const main = document.getElementById("main");
  const MAX_CASES = 100, MAX_QUESTIONS = 10, MAX_CHOICES = 8;
  const TYPES = [["choice", "Multiple choice"], ["text", "Free text"], ["tap", "Tap the finding"]];
  const STATE_TEXT = { ready: "Ready", live: "Live", paused: "Paused", ended: "Ended" };
  let flashNext = null;     // a message for the next page drawn (after a save)

  // ------------------------------------------------------------------ helpers

  function page(title, ...content) {
    const flash = el("div", { id: "flash", "aria-live": "polite" });
    if (flashNext) { flash.append(message(flashNext[0], flashNext[1])); flashNext = null; }
    main.replaceChildren(flash, el("h2", {}, title), ...content.filter(Boolean));
    main.focus({ preventScroll: true });
  }
  function flash(kind, text) {
    const box = document.getElementById("flash");
    if (box) box.replaceChildren(message(kind, text));
    if (box) box.scrollIntoView({ block: "nearest" });
  }
  const isTeacher = () => Kit.who().Role === "teacher";
  const caseTitle = (s) => (s && s.Title) || "(untitled case)";

  // The warning every page of a board without sign-in carries: there is no student to hold anything back from.
  function openBoardWarning() {
    if (Kit.who().CanSignIn) return null;
    return message("warn", "Sign-in is off on this appliance: every device is a teacher: nothing can be held back " +
      "(students would see the answers of unknown cases). Turn AuthenticationEnabled on for a class.");
  }

  function drawAccount() {
    const w = Kit.who();
    document.getElementById("account").replaceChildren(el("span", { id: "signed-in-as" },
      w.Role === "teacher" ? (w.CanSignIn ? ["Signed in as ", el("strong", {}, w.User || "teacher")]
        : "Teacher (sign-in is off on this appliance)") : "Not the teacher"));
  }

  function teacherOnly() {
    page("For the teacher", el("div", { class: "card", id: "teacher-only" },
      el("p", {}, "Teaching sessions are made and run by the teacher. Students join with the code the projector shows."),
      el("div", { class: "actions" }, el("a", { class: "button", href: "/#/sign-in" }, "Teacher sign in"),
        el("a", { class: "button secondary", href: "/join" }, "Join a session"))));
  }

  // Case summaries (GET /cases?expand), by ID: titles and states for the editor and the list.
  const summaries = new Map();
  async function loadSummaries() {
    const list = await api("GET", "/cases?expand&limit=1000");
    for (const s of list) summaries.set(s.ID, s);
  }
  async function summaryOf(id) {
    if (!summaries.has(id)) {
      try { summaries.set(id, await api("GET", `/cases/${encodeURIComponent(id)}`)); } catch (e) { return null; }
    }
    return summaries.get(id);
  }
  // Whole case documents (their key images and annotations), for the tap questions.
  const documents = new Map();
  function caseDocument(id) {
    if (!documents.has(id)) documents.set(id, api("GET", `/cases/${encodeURIComponent(id)}`).catch(() => null));
    return documents.get(id);
  }
  // An instance's Columns and Rows: the key image's frame size, to map the picture to image pixels.
  const frameSizes = new Map();
  function frameSize(instance) {
    if (!frameSizes.has(instance)) {
      frameSizes.set(instance, api("GET", `/instances/${encodeURIComponent(instance)}/simplified-tags`).then(t => ({
        cols: parseInt(t.Columns, 10), rows: parseInt(t.Rows, 10) })).catch(() => null));
    }
    return frameSizes.get(instance);
  }

  // ------------------------------------------------------------------ the list

  async function showList() {
    const box = el("div", { id: "session-list" }, el("p", { class: "muted" }, "Loading…"));
    page("Teaching sessions", openBoardWarning(),
      el("div", { class: "actions" }, el("a", { class: "button", href: "#/new", id: "session-new" }, "New session"),
        el("button", { class: "secondary", id: "session-refresh", onclick: () => route() }, "Refresh")), box);
    const [sessions] = await Promise.all([api("GET", "/sessions?expand"), loadSummaries().catch(() => {})]);
    if (!sessions.length) {
      box.replaceChildren(el("div", { class: "card" }, el("p", {}, "No session yet. A session is an ordered list of cases " +
        "with questions: the students follow your screen and answer on theirs.")));
      return;
    }
    box.replaceChildren(...sessions.map(sessionRow));
  }

  function sessionRow(s) {
    const id = encodeURIComponent(s.ID);
    const act = (label, path, opts = {}) => el("button", { class: opts.cls || "secondary", "data-action": path, onclick: async (ev) => {
      if (opts.confirm && !window.confirm(opts.confirm)) return;
      ev.target.disabled = true;
      try {
        const doc = await api(path === "delete" ? "DELETE" : "POST", path === "delete" ? `/sessions/${id}` : `/sessions/${id}/${path}`);
        flashNext = ["ok", path === "delete" ? `Session ${s.Title || "(untitled)"} deleted.`
          : path === "rerun" ? `A new copy is ready: code ${doc.Code}.` : `Session ${STATE_TEXT[doc.State].toLowerCase()}.`];
        route();
      } catch (e) { ev.target.disabled = false; flash("err", e.message); }
    } }, label);
    const missing = (s.Cases || []).filter(c => c.Missing).length;
    const drafts = (s.Cases || []).filter(c => (summaries.get(c.Case) || {}).State === "draft").length;
    const buttons = [];
    if (s.State !== "ended") {
      buttons.push(el("a", { class: "button", href: `/viewer/live?session=${id}&present=1`, "data-link": "present" }, "Present"));
      if (s.State === "ready") buttons.push(act("Start", "start", { cls: "" }));
      if (s.State === "paused") buttons.push(act("Resume", "start", { cls: "" }));
      if (s.State === "live") buttons.push(act("Pause", "pause"));
      buttons.push(el("a", { class: "button secondary", href: `#/edit/${id}`, "data-link": "edit" }, "Edit"));
    }
    buttons.push(el("a", { class: "button secondary", href: `/app/results.html?session=${id}`, "data-link": "results" }, "Results"));
    if (s.State !== "ended") {
      buttons.push(act("End", "end", { confirm: "End this session? Students are let go and its code stops working. " +
        "Its results stay; you can rerun it later." }));
    } else {
      buttons.push(act("Rerun", "rerun", { cls: "" }));
    }
    buttons.push(act("Delete", "delete", { cls: "danger", confirm: "Delete this session and every answer in it?" }));
    return el("div", { class: "card session-row", "data-session": s.ID },
      el("h3", {}, s.Title || "(untitled session)"),
      el("div", {}, el("span", { class: `tag state-${s.State}` }, STATE_TEXT[s.State] || s.State),
        el("span", { class: "tag" }, s.Mode === "unknown" ? "Unknown cases" : "Known cases"),
        el("span", { class: "tag" }, `${(s.Cases || []).length} case${(s.Cases || []).length === 1 ? "" : "s"}`),
        el("span", { class: "tag" }, `${s.Participants || 0} joined`)),
      s.Code ? el("div", {}, "Code for students: ", el("span", { class: "session-code", "data-code": s.Code }, s.Code),
        " · ", el("a", { href: `/join?code=${encodeURIComponent(s.Code)}` }, "join page")) : null,
      missing ? message("err", `${missing} case${missing === 1 ? " was" : "s were"} deleted since: edit the session or rerun it.`) : null,
      drafts ? message("warn", `${drafts} case${drafts === 1 ? " is a draft" : "s are drafts"}: students cannot open a draft; publish it on its case page.`) : null,
      el("div", { class: "actions" }, buttons));
  }

  // ------------------------------------------------------------------ the editor

  // a question ID unused in its case (the board keeps IDs: answers are tied to them)
  function newQuestionId(entry) {
    const used = new Set(entry.Questions.map(q => q.ID));
    for (let k = entry.Questions.length + 1; ; k++) if (!used.has(`q${k}`)) return `q${k}`;
  }
  function blankQuestion(entry, type) {
    return { ID: newQuestionId(entry), Type: type || "choice", Prompt: "", Choices: ["", ""], Correct: [], KeyImage: 0, Region: null };
  }

  async function showEditor(id) {
    let draft;
    if (id) {
      const doc = await api("GET", `/sessions/${encodeURIComponent(id)}`);
      if (doc.State === "ended") {
        page("Ended", el("div", { class: "card" }, message("info", "An ended session is kept as it was, with its results: rerun it to change it."),
          el("a", { class: "button", href: "#/" }, "Back to the sessions")));
        return;
      }
      draft = { ID: doc.ID, Updated: doc.Updated, State: doc.State, Code: doc.Code, Title: doc.Title || "", Mode: doc.Mode,
        Revealed: doc.Revealed || [],
        Cases: (doc.Cases || []).map(c => ({ Case: c.Case, AllowRetrieve: !!c.AllowRetrieve, Missing: !!c.Missing,
          Questions: (c.Questions || []).map(q => ({ ID: q.ID, Type: q.Type, Prompt: q.Prompt || "",
            Choices: (q.Choices || []).slice(), Correct: (q.Correct || []).slice(), KeyImage: q.KeyImage || 0,
            Region: q.Region || null })) })) };
    } else {
      draft = { Title: "", Mode: "unknown", Cases: [], Revealed: [] };
    }
    await loadSummaries().catch(() => {});
    await Promise.all(draft.Cases.map(c => summaryOf(c.Case)));

    const title = el("input", { id: "session-title", maxlength: "200", value: draft.Title, placeholder: "e.g. Chest emergencies, week 3",
      oninput: () => { draft.Title = title.value; } });
    const mode = (value, text, help) => el("label", { class: "choice" },
      el("input", { type: "radio", name: "session-mode", value, id: `session-mode-${value}`, checked: draft.Mode === value,
        onchange: () => { draft.Mode = value; drawWarnings(); } }), el("span", {}, el("strong", {}, text), " — ", help));
    const warnings = el("div", { id: "session-warnings" });
    const casesBox = el("div", { id: "session-cases" });
    const saveOut = el("div", { id: "session-save-message", "aria-live": "assertive" });
    const save = el("button", { id: "session-save", onclick: () => saveDraft(draft, save, saveOut) }, id ? "Save" : "Create the session");

    function drawWarnings() {
      const w = [openBoardWarning()];
      for (const [k, c] of draft.Cases.entries()) {
        const s = summaries.get(c.Case);
        if (c.Missing) w.push(message("err", `Case ${k + 1} was deleted: remove it from the session.`));
        else if (s && s.State === "draft") {
          w.push(message("warn", `Case ${k + 1} (${caseTitle(s)}) is a draft: students cannot open it. Publish it on its case page.`));
        }
      }
      if (draft.Mode === "unknown" && draft.Cases.length && draft.State && draft.State !== "ready") {
        w.push(message("info", "Students see a case's answer once you reveal it on the presenter's screen."));
      }
      if (draft.Revealed.length) {
        w.push(message("info", "A case is revealed: the cases and their order stay as they are (rerun the session to change them); " +
          "questions of cases not revealed yet can still change."));
      }
      warnings.replaceChildren(...w.filter(Boolean));
    }
    function drawCases() {
      drawWarnings();
      if (!draft.Cases.length) {
        casesBox.replaceChildren(el("p", { class: "muted", id: "session-no-case" }, "No case yet: add cases below, in the order you will show them."));
        return;
      }
      casesBox.replaceChildren(...draft.Cases.map((c, k) => caseCard(draft, c, k, drawCases)));
    }
    drawCases();

    page(id ? "Edit the session" : "New teaching session",
      el("div", { class: "card" },
        el("label", { class: "wide" }, "Title", title),
        el("fieldset", { class: "choices", id: "session-mode" }, el("legend", {}, "Presentation"),
          mode("unknown", "Unknown cases", "students see the images only; the answer after you reveal each case"),
          mode("known", "Known cases", "students see each case whole, answer included")),
        draft.Code ? el("p", {}, "Code for students: ", el("span", { class: "session-code" }, draft.Code)) : null),
      warnings,
      el("div", { class: "card" }, el("h3", {}, "Cases, in order"), casesBox, draft.Revealed.length ? null : casePicker(draft, drawCases)),
      el("div", { class: "editor-bar" }, saveOut, el("div", { class: "actions" }, save,
        el("a", { class: "button secondary", href: "#/" }, "Cancel"))));
  }

  function caseCard(draft, c, k, redraw) {
    const s = summaries.get(c.Case);
    const n = draft.Cases.length;
    const fixed = draft.Revealed.length > 0;    // the board keeps answers and reveals by case index: the list stays
    const move = (d) => { const [x] = draft.Cases.splice(k, 1); draft.Cases.splice(k + d, 0, x); redraw(); };
    const qBox = el("div", { class: "questions" });
    const drawQuestions = () => {
      qBox.replaceChildren(...c.Questions.map((q, j) => questionEditor(c, q, j, k, drawQuestions)),
        el("div", { class: "actions" }, TYPES.map(([type, text]) => el("button", { class: "secondary", "data-add-question": type,
          disabled: c.Questions.length >= MAX_QUESTIONS, onclick: () => { c.Questions.push(blankQuestion(c, type)); drawQuestions(); } },
        `+ ${text}`))));
    };
    drawQuestions();
    return el("section", { class: `session-case${c.Missing ? " missing" : ""}`, "data-case-index": k, "data-case": c.Case },
      el("header", {},
        el("span", { class: "case-name" }, `${k + 1}. `, c.Missing ? "(deleted case)" : caseTitle(s), " ",
          s ? el("span", { class: `tag state-${s.State}` }, s.State === "draft" ? "draft" : "published") : null,
          draft.Revealed.includes(k) ? el("span", { class: "tag" }, "revealed") : null),
        el("div", { class: "actions" },
          el("button", { class: "secondary icon-button", "data-move": "up", "aria-label": `Move case ${k + 1} up`, disabled: fixed || k === 0,
            onclick: () => move(-1) }, "↑"),
          el("button", { class: "secondary icon-button", "data-move": "down", "aria-label": `Move case ${k + 1} down`, disabled: fixed || k === n - 1,
            onclick: () => move(1) }, "↓"),
          el("button", { class: "secondary", "data-remove-case": k, disabled: fixed, onclick: () => { draft.Cases.splice(k, 1); redraw(); } }, "Remove"))),
      el("label", { class: "inline" }, el("input", { type: "checkbox", class: "allow-retrieve", checked: c.AllowRetrieve,
        onchange: (ev) => { c.AllowRetrieve = ev.target.checked; } }),
      "Students' DICOM apps may retrieve its files before the reveal (a file carries its descriptions)"),
      qBox);
  }

  function questionEditor(c, q, j, k, redraw) {
    const body = el("div", { class: "question-body" });
    const type = el("select", { class: "question-type", "aria-label": `Question ${j + 1}: type`, onchange: () => {
      q.Type = type.value;
      if (q.Type === "choice" && q.Choices.length < 2) q.Choices = ["", ""];
      drawBody();
    } }, TYPES.map(([v, t]) => el("option", { value: v, selected: q.Type === v }, t)));
    const prompt = el("textarea", { class: "question-prompt", maxlength: "1000", rows: "2", "aria-label": `Question ${j + 1}: the question`,
      placeholder: q.Type === "tap" ? "e.g. Tap the pneumothorax" : "e.g. What is the most likely diagnosis?",
      oninput: () => { q.Prompt = prompt.value; } });
    prompt.value = q.Prompt;
    function drawBody() {
      if (q.Type === "choice") body.replaceChildren(choicesEditor(q, drawBody));
      else if (q.Type === "tap") body.replaceChildren(tapEditor(c, q));
      else body.replaceChildren(el("p", { class: "muted" }, "Students type a few words; you see them grouped, the most given first."));
    }
    drawBody();
    return el("div", { class: "question", "data-question": q.ID },
      el("div", { class: "row" }, el("strong", {}, `Question ${j + 1}`), type,
        el("button", { class: "secondary", "data-remove-question": q.ID, onclick: () => { c.Questions.splice(j, 1); redraw(); } }, "Remove question")),
      prompt, body);
  }

  function choicesEditor(q, redraw) {
    const rows = q.Choices.map((text, i) => {
      const input = el("input", { type: "text", class: "choice-text", maxlength: "200", "aria-label": `Choice ${i + 1}`,
        placeholder: `Choice ${i + 1}`, oninput: () => { q.Choices[i] = input.value; } });
      input.value = text;
      return el("div", { class: "choice-row" },
        el("label", { class: "choice" }, el("input", { type: "checkbox", class: "choice-correct", checked: q.Correct.includes(i),
          onchange: (ev) => {
            q.Correct = q.Correct.filter(x => x !== i);
            if (ev.target.checked) q.Correct.push(i);
            q.Correct.sort((a, b) => a - b);
          } }), "correct"),
        input,
        el("button", { class: "secondary icon-button", "aria-label": `Remove choice ${i + 1}`, disabled: q.Choices.length <= 2, onclick: () => {
          q.Choices.splice(i, 1);
          q.Correct = q.Correct.filter(x => x !== i).map(x => (x > i ? x - 1 : x));
          redraw();
        } }, "✕"));
    });
    return el("div", { class: "choices-editor" }, rows,
      el("button", { class: "secondary", "data-add-choice": "", disabled: q.Choices.length >= MAX_CHOICES,
        onclick: () => { q.Choices.push(""); redraw(); } }, "+ Add a choice"),
      el("p", { class: "muted" }, "Tick the right answer (none, one or several: with several, students may pick several)."));
  }

  // The part of the frame a key-image picture shows (keyimage_render's crop: the whole frame at a
  // Zoom of 1 or less, else keyobjects.view_box), in image pixels.
  function viewBox(cols, rows, zoom, center) {
    if (!zoom || zoom <= 1) return [0, 0, cols, rows];
    const w = cols / zoom, h = rows / zoom;
    let cx = cols / 2, cy = rows / 2;
    if (Array.isArray(center) && center.length === 2 && isFinite(center[0]) && isFinite(center[1])) [cx, cy] = center;
    const clamp = (v, lo, hi) => Math.min(Math.max(v, lo), hi);
    cx = w <= cols ? clamp(cx, w / 2, cols - w / 2) : cols / 2;
    cy = h <= rows ? clamp(cy, h / 2, rows - h / 2) : rows / 2;
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2];
  }

  function tapEditor(c, q) {
    const box = el("div", { class: "tap-editor" }, el("p", { class: "muted" }, "Loading the key images…"));
    caseDocument(c.Case).then(doc => {
      const keys = (doc && doc.KeyImages) || [];
      if (!keys.length) {
        box.replaceChildren(message("warn", "This case has no key image: mark one on its case page, then come back for a tap question."));
        return;
      }
      if (q.KeyImage >= keys.length) q.KeyImage = 0;
      const pic = el("div", { class: "keypic" });
      const note = el("div", { class: "region-note", "aria-live": "polite" });
      const keySel = el("select", { class: "question-key-image", "aria-label": "Key image", onchange: () => {
        q.KeyImage = parseInt(keySel.value, 10);
        if (q.Region && q.Region.Type === "rectangle") q.Region = null;   // a rectangle belongs to the image it was drawn on
        regionSel.value = q.Region ? "stored" : "ellipse";
        draw();
      } }, keys.map((ki, i) => el("option", { value: i, selected: i === q.KeyImage }, `Key image ${i + 1}${ki.Caption ? ": " + ki.Caption : ""}`)));
      const stored = q.Region && q.Region.Type !== "rectangle" ? q.Region : null;
      const regionSel = el("select", { class: "question-region", "aria-label": "Region the taps are counted in", onchange: () => {
        if (regionSel.value === "ellipse") q.Region = null;
        else if (regionSel.value === "stored") q.Region = stored;
        else if (!q.Region || q.Region.Type !== "rectangle") q.Region = { Type: "rectangle", Points: [] };
        draw();
      } }, el("option", { value: "ellipse" }, "The key image's ellipse"),
      el("option", { value: "rectangle" }, "A rectangle I draw"),
      stored ? el("option", { value: "stored" }, `As stored (${stored.Type})`) : null);
      regionSel.value = !q.Region ? "ellipse" : q.Region.Type === "rectangle" ? "rectangle" : "stored";
      box.replaceChildren(el("div", { class: "row" }, el("label", {}, "Key image", keySel), el("label", {}, "Counted inside", regionSel)),
        pic, note);

      let view = null;    // [x0, y0, x1, y1] of the picture in image pixels, once known
      const img = el("img", { alt: "The key image", draggable: "false" });
      const canvas = el("canvas", { class: "region-canvas" });
      pic.replaceChildren(img, canvas);
      const toImage = (ev) => {
        const r = canvas.getBoundingClientRect();
        const fx = Math.min(Math.max((ev.clientX - r.left) / r.width, 0), 1);
        const fy = Math.min(Math.max((ev.clientY - r.top) / r.height, 0), 1);
        return [+(view[0] + fx * (view[2] - view[0])).toFixed(1), +(view[1] + fy * (view[3] - view[1])).toFixed(1)];
      };
      function paint() {
        const r = img.getBoundingClientRect();
        const dpr = window.devicePixelRatio || 1;
        canvas.width = Math.max(1, Math.round(r.width * dpr));
        canvas.height = Math.max(1, Math.round(r.height * dpr));
        const g = canvas.getContext("2d");
        g.clearRect(0, 0, canvas.width, canvas.height);
        if (!view || !q.Region || q.Region.Type !== "rectangle" || q.Region.Points.length !== 2) return;
        const sx = canvas.width / (view[2] - view[0]), sy = canvas.height / (view[3] - view[1]);
        const [[ax, ay], [bx, by]] = q.Region.Points;
        const x = (Math.min(ax, bx) - view[0]) * sx, y = (Math.min(ay, by) - view[1]) * sy;
        const w = Math.abs(bx - ax) * sx, h = Math.abs(by - ay) * sy;
        g.lineWidth = 5 * dpr; g.strokeStyle = "#000"; g.strokeRect(x, y, w, h);
        g.lineWidth = 2.5 * dpr; g.strokeStyle = "#ffdd00"; g.strokeRect(x, y, w, h);
      }
      function sayRegion() {
        const ki = keys[q.KeyImage];
        const ellipse = (ki.Annotations || []).find(a => a.Type === "ellipse");
        pic.classList.toggle("drawing", regionSel.value === "rectangle");
        if (regionSel.value === "ellipse") {
          note.replaceChildren(ellipse ? message("info", "Taps inside the key image's ellipse (drawn on it) count as right.")
            : message("warn", "This key image has no ellipse: taps are shown as a heat map, none counted as right. Draw a rectangle instead?"));
        } else if (regionSel.value === "rectangle") {
          note.replaceChildren(message(q.Region.Points.length === 2 ? "info" : "warn", q.Region.Points.length === 2
            ? "Taps inside the rectangle count as right. Drag on the image again to redraw it."
            : "Drag a finger across the finding on the image to draw the rectangle."));
        } else {
          note.replaceChildren(message("info", `The ${stored.Type} stored with the question is kept.`));
        }
      }
      function draw() {
        const ki = keys[q.KeyImage];
        view = null;
        img.onload = async () => {
          const size = await frameSize(ki.Instance);
          if (size && size.cols && size.rows) view = viewBox(size.cols, size.rows, ki.Zoom, ki.Center);
          paint();
        };
        img.src = `/cases/${encodeURIComponent(c.Case)}/key-images/${q.KeyImage}/rendered`;
        sayRegion();
      }
      let start = null;
      canvas.addEventListener("pointerdown", (ev) => {
        if (regionSel.value !== "rectangle" || !view) return;
        ev.preventDefault();
        canvas.setPointerCapture(ev.pointerId);
        start = toImage(ev);
        q.Region = { Type: "rectangle", Points: [start, start] };
        paint();
      });
      canvas.addEventListener("pointermove", (ev) => {
        if (!start) return;
        ev.preventDefault();
        q.Region.Points = [start, toImage(ev)];
        paint();
      });
      const finish = (ev) => {
        if (!start) return;
        const end = toImage(ev);
        const [ax, ay] = start;
        start = null;
        // a tap, not a drag: no rectangle (an empty one would count nothing)
        if (Math.abs(end[0] - ax) < 1 || Math.abs(end[1] - ay) < 1) q.Region = { Type: "rectangle", Points: [] };
        else q.Region.Points = [[Math.min(ax, end[0]), Math.min(ay, end[1])], [Math.max(ax, end[0]), Math.max(ay, end[1])]];
        paint();
        sayRegion();
      };
      canvas.addEventListener("pointerup", finish);
      canvas.addEventListener("pointercancel", finish);
      window.addEventListener("resize", paint);
      draw();
    });
    return box;
  }

  function casePicker(draft, redraw) {
    const q = el("input", { id: "case-search", type: "search", placeholder: "Search the teaching cases", autocomplete: "off",
      "aria-label": "Search the teaching cases" });
    const list = el("ul", { class: "case-picks", id: "case-picks" });
    let asked = 0;
    async function search() {
      const mine = ++asked;
      const text = q.value.trim();
      let found;
      try {
        found = await api("GET", `/cases?expand&limit=50${text ? "&q=" + encodeURIComponent(text) : ""}`);
      } catch (e) { list.replaceChildren(el("li", {}, message("err", e.message))); return; }
      if (mine !== asked) return;     // a newer search is under way
      for (const s of found) summaries.set(s.ID, s);
      if (!found.length) { list.replaceChildren(el("li", { class: "muted" }, text ? "No case matches." : "No teaching case yet: make one from a study.")); return; }
      list.replaceChildren(...found.map(s => {
        const added = draft.Cases.some(c => c.Case === s.ID);
        return el("li", { "data-pick": s.ID },
          el("span", { class: "pick-name" }, caseTitle(s), " ", el("span", { class: `tag state-${s.State}` }, s.State),
            s.KeyImageCount ? el("span", { class: "tag" }, `${s.KeyImageCount} key image${s.KeyImageCount === 1 ? "" : "s"}`) : null),
          el("button", { class: added ? "secondary" : "", disabled: added || draft.Cases.length >= MAX_CASES, onclick: () => {
            draft.Cases.push({ Case: s.ID, AllowRetrieve: false, Missing: false, Questions: [] });
            redraw();
            search();
          } }, added ? "Added" : "Add"));
      }));
    }
    let timer = null;
    q.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 250); });
    q.addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); clearTimeout(timer); search(); } });
    search();
    return el("div", { id: "session-add-case" }, el("h3", {}, "Add cases"), q, list);
  }

  // The document to send: what the teacher wrote, none of the board's fields but Updated (the check
  // that nobody changed the session meanwhile).
  function body(draft) {
    const b = { Title: draft.Title.trim(), Mode: draft.Mode, Cases: draft.Cases.map(c => ({ Case: c.Case, AllowRetrieve: c.AllowRetrieve,
      Questions: c.Questions.map(q => {
        const out = { ID: q.ID, Type: q.Type, Prompt: q.Prompt.trim() };
        if (q.Type === "choice") { out.Choices = q.Choices.map(x => x.trim()); out.Correct = q.Correct.slice(); }
        if (q.Type === "tap") {
          out.KeyImage = q.KeyImage;
          out.Region = q.Region && q.Region.Points.length ? q.Region : null;
        }
        return out;
      }) })) };
    if (draft.Updated) b.Updated = draft.Updated;
    return b;
  }

  // what the editor can say before the board does
  function problem(draft) {
    for (const [k, c] of draft.Cases.entries()) {
      for (const [j, q] of c.Questions.entries()) {
        const where = `Case ${k + 1}, question ${j + 1}`;
        if (q.Type === "choice" && q.Choices.filter(x => x.trim()).length < 2) return [k, q.ID, `${where}: give at least two choices.`];
        if (q.Type === "choice" && q.Choices.some(x => !x.trim())) return [k, q.ID, `${where}: a choice is empty: fill it in or remove it.`];
        if (q.Type === "tap" && q.Region && q.Region.Type === "rectangle" && q.Region.Points.length !== 2) {
          return [k, q.ID, `${where}: draw the rectangle on the key image, or count taps in its ellipse.`];
        }
      }
    }
    return null;
  }

  function markInvalid(k, qid) {
    for (const e of main.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
    const card = main.querySelector(`.session-case[data-case-index="${k}"]`);
    if (!card) return;
    const target = (qid !== null && qid !== undefined && [...card.querySelectorAll(".question")].find(e => e.dataset.question === qid)) || card;
    target.setAttribute("aria-invalid", "true");
    target.scrollIntoView({ block: "center" });
  }

  async function saveDraft(draft, button, out) {
    const p = problem(draft);
    if (p) { out.replaceChildren(message("err", p[2])); markInvalid(p[0], p[1]); return; }
    button.disabled = true;
    out.replaceChildren(message("info", "Saving…"));
    try {
      const doc = draft.ID ? await api("PUT", `/sessions/${encodeURIComponent(draft.ID)}`, body(draft))
        : await api("POST", "/sessions", body(draft));
      flashNext = ["ok", draft.ID ? `Saved: ${doc.Title || "(untitled session)"}.` : `Session created: students join with code ${doc.Code}.`];
      location.hash = "#/";
    } catch (e) {
      // the board names the field: Cases[2].Questions[0].Choices
      const m = /Cases\[(\d+)\](?:\.Questions\[(\d+)\])?/.exec(e.message || "");
      if (m) {
        const k = parseInt(m[1], 10), c = draft.Cases[k];
        markInvalid(k, c && m[2] !== undefined && c.Questions[parseInt(m[2], 10)] ? c.Questions[parseInt(m[2], 10)].ID : null);
      }
      out.replaceChildren(message("err", e.status === 409 ? `Not saved: ${e.message}` : e.message));
    } finally { button.disabled = false; }
  }

  // ------------------------------------------------------------------ router

  let routing = Promise.resolve();
  function route() {
    routing = routing.then(async () => {
      delete main.dataset.view;
      const [kind, id] = (location.hash.slice(1) || "/").split("/").filter(Boolean);
      try {
        if (!isTeacher()) teacherOnly();
        else if (kind === "new") await showEditor(null);
        else if (kind === "edit" && id) await showEditor(decodeURIComponent(id));
        else await showList();
      } catch (e) {
        page(e.status === 404 ? "Not found" : "Error", el("div", { class: "card" },
          message("err", e.status === 404 ? "This session does not exist any more (it may have been deleted)." : e.message),
          el("a", { class: "button", href: "#/" }, "Back to the sessions")));
      }
      main.dataset.view = `${kind || "list"}:${id || ""}`;   // which page is drawn (tests wait for it)
    });
    return routing;
  }

  window.addEventListener("hashchange", route);
  Promise.all([Kit.loadWho(), Kit.appName()]).then(() => { drawAccount(); route(); });
})();
