/* pipacs explorer: teaching cases. The case list with its search (#/cases), a case's page
   (#/case/{id}: the student's reading view with its reveal, the teacher's editing view) and
   "Make a case" on a study. Loaded after explorer.js, whose helpers (el, api, page, flash,
   message, SESSION, isTeacher) it uses; user text only ever goes in through text nodes. */
"use strict";

const CASE_TEXT_FIELDS = [
  ["Title", "Title", "input"], ["History", "Clinical history", "textarea"], ["Question", "Question", "textarea"],
  ["Findings", "Findings", "textarea"], ["Diagnosis", "Diagnosis", "textarea"],
  ["DifferentialDiagnosis", "Differential diagnosis", "textarea"], ["Discussion", "Discussion", "textarea"],
  ["TeachingPoints", "Teaching points", "textarea"], ["References", "References", "textarea"],
];
// what the reveal shows, in reading order
const CASE_ANSWER_FIELDS = ["Findings", "Diagnosis", "DifferentialDiagnosis", "Discussion", "TeachingPoints", "References"];
const CASE_PAGE_SIZE = 25;
const CASE_SEARCH_DELAY_MS = 300;   // typing pauses this long before the list is asked again
const COMMON_MODALITIES = ["CT", "MR", "CR", "DX", "US", "MG", "NM", "PT", "XA", "RF", "OT"];
const LABEL_RE = /^[A-Za-z0-9_-]{1,64}$/;

let CASE_VOCABULARY = null;
async function caseVocabulary() {
  if (!CASE_VOCABULARY) CASE_VOCABULARY = await api("GET", "/cases/vocabulary");
  return CASE_VOCABULARY;
}
const caseLabel = (field) => (CASE_TEXT_FIELDS.find(f => f[0] === field) || [field, field])[1];
const caseHref = (id, params) => `#/case/${encodeURIComponent(id)}${params ? "?" + params : ""}`;
const viewerHref = (series, caseId, k) => `/viewer/${encodeURIComponent(series)}?case=${encodeURIComponent(caseId)}` +
  (k ? `&instance=${encodeURIComponent(k.Instance)}&frame=${k.Frame || 1}` : "");

// ------------------------------------------------------------------ "Make a case" (a study's row and page)

function makeCaseButton(studyId, title) {
  return el("button", { class: "secondary make-case", "data-study": studyId, onclick: async (ev) => {
    ev.preventDefault(); ev.stopPropagation();
    ev.target.disabled = true;
    try {
      const doc = await api("POST", "/cases", { Title: (title || "").trim() || "New case", Studies: [studyId] });
      goTo(caseHref(doc.ID));
    } catch (e) { flash("err", `No case was made: ${e.message}`); ev.target.disabled = false; }
  } }, "Make a case");
}

// A patient or study that teaching cases use: the board refuses (409 naming the cases); say which
// cases by their titles and delete only if the teacher says so again (?force: it leaves them).
async function deleteAskingCases(path, what) {
  try { return await api("DELETE", path); } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 409) throw e;
    const ids = [...new Set((e.message || "").match(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g) || [])];
    const titles = await Promise.all(ids.slice(0, 20).map(async cid => {
      try { return `"${(await api("GET", `/cases/${cid}`)).Title || "untitled"}"`; } catch (x) { return cid; }
    }));
    const which = titles.length ? titles.join(", ") + (ids.length > titles.length ? ` and ${ids.length - titles.length} more` : "")
      : "some teaching cases";
    const cases = `the teaching case${ids.length === 1 ? "" : "s"} ${which}`, those = ids.length === 1 ? "that case" : "those cases";
    // a study leaves the cases; a series or an instance takes only its key images out of them
    const asked = what === "series" || what === "instance"
      ? `This ${what} holds key images of ${cases}. Delete it anyway? Its key images leave ${those}; the rest of each case stays.`
      : `This ${what} is used by ${cases}. Delete it anyway? It leaves ${those}, with its key images; the rest of each case stays.`;
    if (!window.confirm(asked)) return null;
    return api("DELETE", `${path}?force`);
  }
}

// On a study's page: the teaching cases made of it (a student: the published ones), among the
// newest STUDY_CASES_SCAN cases (one page of GET /cases at its largest: the board has no study filter).
const STUDY_CASES_SCAN = 1000;
async function studyCasesCard(studyId) {
  let cases = [];
  try { cases = (await api("GET", `/cases?expand&limit=${STUDY_CASES_SCAN}`)).filter(c => (c.Studies || []).includes(studyId)); }
  catch (e) { return null; }
  if (!cases.length) return null;
  return el("div", { class: "card", id: "study-cases" }, el("h3", {}, "Teaching cases"),
    el("ul", { class: "case-rows" }, cases.map(c => caseRow(c, isTeacher()))));
}

// One case of a bundle the upload page sent to POST /cases/import: what became of it, what the
// teacher can do next, and each problem the board reported (a study or key image left out, why refused).
const CASE_IMPORT_SAID = {
  Imported: ["imported", "open it to check it"],
  AlreadyPresent: ["already present", "this board has the case already: nothing was doubled or changed"],
  Refused: ["refused", "the case was not made (its images, if any, are stored): fix what is said below and upload the bundle again"],
};
function caseImportItem(id, status, problems) {
  const [word, next] = CASE_IMPORT_SAID[status] || [String(status), ""];
  const title = el("span", { class: "case-import-title" });
  const item = el("li", { class: "case-import", "data-case": id, "data-status": status }, el("strong", {}, `case ${id}`), `: ${word}`,
    title, next ? ` — ${next}.` : "", status !== "Refused" ? [" ", el("a", { href: caseHref(id) }, "Open the case")] : null,
    (problems || []).length ? el("ul", { class: "case-import-problems" }, problems.map(p => el("li", {}, p))) : null);
  if (status !== "Refused") {
    api("GET", `/cases/${encodeURIComponent(id)}`).then(d => { title.textContent = ` ("${d.Title || "untitled"}")`; }).catch(() => {});
  }
  return item;
}

// ------------------------------------------------------------------ the case list and its search

async function showCases(params) {
  const q = new URLSearchParams(params || "");
  const vocab = await caseVocabulary();
  const teacher = isTeacher();
  const select = (id, name, label, values) => el("label", {}, label, el("select", { id, name },
    el("option", { value: "" }, "any"), values.map(v => el("option", { value: v, selected: q.get(name) === v }, v))));
  const search = el("input", { id: "case-q", name: "q", type: "search", value: q.get("q") || "", autocomplete: "off",
    placeholder: 'e.g. pneumothorax, "ring enhancing", fract*', "aria-label": "Search the cases", enterkeyhint: "search" });
  const filters = [
    el("label", {}, "Collection", el("input", { id: "case-collection", name: "collection", value: q.get("collection") || "",
      list: "case-collections", size: 12, autocapitalize: "none" })),
    el("datalist", { id: "case-collections" }),
    select("case-region", "body-region", "Body region", vocab.BodyRegions || []),
    el("label", {}, "Modality", el("input", { id: "case-modality", name: "modality", value: q.get("modality") || "", size: 5,
      list: "case-modalities", autocapitalize: "characters" })),
    el("datalist", { id: "case-modalities" }, COMMON_MODALITIES.map(m => el("option", { value: m }))),
    select("case-category", "category", "Category", vocab.Categories || []),
    select("case-difficulty", "difficulty", "Difficulty", vocab.Difficulties || []),
    teacher ? select("case-state", "state", "State", ["draft", "published"]) : null,
  ];
  const form = el("form", { class: "card", role: "search", id: "case-search", onsubmit: (ev) => { ev.preventDefault(); since = 0; load(); } },
    el("div", { class: "row" }, el("label", { class: "grow" }, "Search", search), el("button", { type: "submit" }, "Search")),
    el("div", { class: "row" }, ...filters.filter(Boolean)));
  const list = el("div", { id: "case-list", "aria-live": "polite" }, el("p", { class: "muted" }, "Searching…"));
  const pager = el("div", { class: "actions", id: "case-pager" });
  const bundle = el("div", { class: "actions", id: "collection-bundle" });   // a collection chosen: all of it as one ZIP
  const madeDeleted = q.get("made") === "deleted" ? message("ok", "The case was deleted. Its studies are still here.") : null;
  page("Teaching cases", madeDeleted,
    teacher ? el("div", { class: "actions" }, el("button", { id: "new-case", onclick: newCase }, "New case"),
      el("span", { class: "muted" }, "or open a study and tap Make a case.")) : null,
    form, el("div", { class: "card" }, list, pager, bundle));
  api("GET", "/tools/labels").then(ls => {
    document.getElementById("case-collections")?.replaceChildren(...ls.map(l => el("option", { value: l })));
  }).catch(() => {});

  let since = Math.max(Number(q.get("since")) || 0, 0), seq = 0, typing = null;
  const values = () => {
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form).entries()) if (String(v).trim()) p.set(k, String(v).trim());
    return p;
  };
  async function load() {
    const mine = ++seq;
    const p = values();
    if (since) p.set("since", String(since));
    history.replaceState(null, "", `#/cases${p.toString() ? "?" + p : ""}`);   // a reload keeps the search, no redraw
    p.set("limit", String(CASE_PAGE_SIZE));
    let r;
    try { r = await api("GET", `/cases?expand&${p}`, undefined, { raw: true }); } catch (e) {
      if (mine === seq) { list.replaceChildren(message("err", `The search failed: ${e.message}`)); pager.replaceChildren(); }
      return;
    }
    if (mine !== seq || !list.isConnected) return;   // a newer search, or another page, is on screen
    const cases = r.text ? JSON.parse(r.text) : [];
    list.dataset.q = p.get("q") || "";   // the words this list answers (what the tests wait for)
    const total = Number(r.headers.get("X-Total-Count") || cases.length);
    const filtered = [...p.keys()].some(k => k !== "limit" && k !== "since");
    if (!cases.length) {
      list.replaceChildren(el("p", { id: "case-none" }, filtered ? "No case matches."
        : teacher ? "No case yet: open a study and tap Make a case." : "The teacher has not published a case yet."));
    } else {
      list.replaceChildren(el("p", { class: "muted", id: "case-count" },
        `${since + 1}–${since + cases.length} of ${total} case${total === 1 ? "" : "s"}`),
      el("ul", { class: "case-rows" }, cases.map(c => caseRow(c, teacher))));
    }
    const label = p.get("collection") || "";
    bundle.replaceChildren(...(mayDownload() && cases.length && LABEL_RE.test(label) ? [collectionBundleLink(label)] : []),
      ...(teacher && cases.length && LABEL_RE.test(label) ? [prepareForClass({ Collections: [label] }, `the collection ${label}`)] : []));
    pager.replaceChildren(...[
      since > 0 ? el("button", { class: "secondary", id: "case-prev", onclick: () => { since = Math.max(since - CASE_PAGE_SIZE, 0); load(); } }, "Previous") : null,
      since + cases.length < total ? el("button", { class: "secondary", id: "case-next", onclick: () => { since += CASE_PAGE_SIZE; load(); } }, "Next") : null].filter(Boolean));
  }
  search.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { since = 0; load(); }, CASE_SEARCH_DELAY_MS); });
  for (const f of form.querySelectorAll("select, input:not([type=search])")) {
    f.addEventListener(f.tagName === "SELECT" ? "change" : "input", () => {
      clearTimeout(typing); typing = setTimeout(() => { since = 0; load(); }, f.tagName === "SELECT" ? 0 : CASE_SEARCH_DELAY_MS);
    });
  }
  await load();
}

function caseRow(c, teacher) {
  const meta = [(c.Modalities || []).join(", "), c.BodyRegion, c.Category, c.Difficulty].filter(Boolean).join(" · ");
  return el("li", {}, el("a", { class: "case-row", href: caseHref(c.ID), "data-case": c.ID },
    // the image's own window (rendered), small: a list of 25 rows stays light on a Pi
    c.Thumbnail ? previewImg(`/instances/${encodeURIComponent(c.Thumbnail)}/rendered?width=192&height=192`, "")
      : el("div", { class: "noimg" }, "no image"),
    el("div", {}, el("strong", { class: "case-title" }, c.Title || "(untitled)"),
      el("div", { class: "muted" }, meta || "—"),
      teacher ? el("span", { class: `tag state-${c.State}`, "data-state": c.State }, c.State === "published" ? "Published" : "Draft") : null,
      teacher && c.Unknown ? el("span", { class: "tag unknown" }, "Unknown case") : null,
      (c.Collections || []).map(l => el("span", { class: "tag" }, l)))));
}

// "Prepare for class" (teacher): every image of the case or collection is made ahead into the class
// cache (POST /pipacs/class/prepare), so thirty students opening it at once get it without waiting;
// progress polled from GET, Stop is DELETE. One preparation at a time on the board: a new one replaces
// it, so the page shows only a job made for what it shows (the job's "For"), and asks before replacing
// one made for something else.
const PREPARE_POLL_MS = 1000;
const PREPARE_KINDS = ["Cases", "Collections", "Studies"];
function preparesFor(p, what) {   // whether job p was made for exactly these names
  const key = o => PREPARE_KINDS.map(k => [...((o && o[k]) || [])].sort().join("\n")).join("\t");
  return !!p && key(p.For) === key(what);
}
function preparedWords(p) {       // "The case "Chest" ready at 21:14 (12.0 MB)", and what was not ready
  const title = p.Title ? p.Title[0].toUpperCase() + p.Title.slice(1) : "Everything";
  const at = p.Finished ? new Date(p.Finished).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }) : "";
  const notReady = (p.Message || "").split(" Not ready: ")[1];
  return `${title} ready${at ? ` at ${at}` : ""} (${fmtBytes(p.Bytes || 0)})` + (notReady ? `. Not ready: ${notReady}` : "");
}
function prepareForClass(what, name) {
  const status = el("span", { class: "muted", id: "prepare-status", "aria-live": "polite" });
  const stop = el("button", { class: "secondary", id: "prepare-stop", hidden: true, onclick: async () => {
    try { show(await api("DELETE", "/pipacs/class/prepare")); } catch (e) { status.textContent = `Could not stop: ${e.message}`; }
  } }, "Stop");
  const start = el("button", { class: "secondary", id: "prepare-class", title: `Make every image of ${name} ready before the class`,
    onclick: async () => {
      start.disabled = true;
      let current = null;
      try { current = await api("GET", "/pipacs/class/prepare"); } catch (e) { current = null; }
      if (current && current.State === "running" && !preparesFor(current, what) &&
          !window.confirm(`${current.Title || "Something else"} is being prepared for class (${current.SeriesDone} of ` +
            `${current.Series} series). Stop that and prepare ${name} instead?`)) {
        start.disabled = false;
        return;
      }
      status.textContent = "Starting…";
      try { await api("POST", "/pipacs/class/prepare", what); poll(); } catch (e) {
        status.textContent = `Not prepared: ${e.message}`;
        start.disabled = false;
      }
    } }, "Prepare for class");
  const box = el("div", { class: "actions", id: "prepare-box" }, start, stop, status);
  let timer = null;
  function show(p) {   // true while this page's job runs
    if (!preparesFor(p, what)) {          // idle, or a job for something else: nothing said here
      start.disabled = false;
      stop.hidden = true;
      status.textContent = "";
      box.dataset.state = p.State === "idle" ? "idle" : "other";
      return false;
    }
    const running = p.State === "running";
    start.disabled = running;
    stop.hidden = !running;
    if (running) {
      status.textContent = `Preparing ${p.Title || name}… ${p.FramesDone} of ${p.Frames} frames, ` +
        `${p.SeriesDone} of ${p.Series} series` + (p.Bytes ? ` (${fmtBytes(p.Bytes)})` : "");
    } else {
      status.textContent = p.State === "done" ? preparedWords(p) : p.Message || "";
    }
    box.dataset.state = p.State;
    return running;
  }
  async function poll() {
    clearTimeout(timer);
    if (!box.isConnected && timer !== null) return;   // the page changed: stop asking
    let p;
    try { p = await api("GET", "/pipacs/class/prepare"); } catch (e) { status.textContent = `No progress: ${e.message}`; return; }
    if (show(p)) timer = setTimeout(poll, PREPARE_POLL_MS);
  }
  // this page's job, running or finished (started earlier, or from another page): show it
  api("GET", "/pipacs/class/prepare").then(p => { if (show(p)) timer = setTimeout(poll, PREPARE_POLL_MS); })
    .catch(() => {});
  return box;
}

async function newCase() {
  try {
    const doc = await api("POST", "/cases", { Title: "New case" });
    goTo(caseHref(doc.ID));
  } catch (e) { flash("err", `No case was made: ${e.message}`); }
}

// ------------------------------------------------------------------ a key image: its picture with the annotations drawn

// hide: an unknown case not revealed yet: no caption, no label text (the shapes are drawn)
function keyImageFigure(doc, k, n, series, editing, hide) {
  const frame = (k.Frame || 1) - 1;
  const p = new URLSearchParams();
  if (k.Window && k.Window.Width > 0) { p.set("window-center", k.Window.Center); p.set("window-width", k.Window.Width); }
  const src = `/instances/${encodeURIComponent(k.Instance)}/frames/${frame}/rendered${p.toString() ? "?" + p : ""}`;
  const canvas = el("canvas", { "aria-hidden": "true" });
  const anns = hide ? (k.Annotations || []).map(a => (a.Type === "text" ? { ...a, Text: "" } : a)) : k.Annotations || [];
  const said = hide ? (anns.length ? `${anns.length} annotation${anns.length === 1 ? "" : "s"}` : "") : Annot.describe(anns);
  const shownCaption = hide ? "" : k.Caption || "";
  const img = el("img", { alt: `Key image ${n + 1}${shownCaption ? ": " + shownCaption : ""}${said ? ` (${said})` : ""}`, src, loading: "lazy" });
  const box = el("div", { class: "kthumb" }, img, canvas);
  const paint = () => {
    const w = box.clientWidth, h = box.clientHeight, dpr = window.devicePixelRatio || 1;
    if (!img.naturalWidth || !w) return;
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    // the rendered picture is the image at its own size (up to 4096 a side): image pixels = natural pixels
    const fit = Math.min(canvas.width / img.naturalWidth, canvas.height / img.naturalHeight);
    const map = { scale: fit, ox: (canvas.width - img.naturalWidth * fit) / 2, oy: (canvas.height - img.naturalHeight * fit) / 2 };
    // lines and labels a little smaller on a small picture, never unreadable
    Annot.drawAll(ctx, anns, map, { unit: dpr * Math.min(Math.max(w / 400, 0.6), 1) });
    box.dataset.annotations = String(anns.length);
  };
  img.addEventListener("load", paint);
  img.addEventListener("error", () => img.replaceWith(el("div", { class: "noimg" }, "no image")));
  if (window.ResizeObserver) new ResizeObserver(paint).observe(box);
  const picture = series ? el("a", { href: viewerHref(series, doc.ID, k), class: "key-open", title: "Open in the viewer at this image" }, box) : box;
  // the picture with its annotations burnt in, for slides (GET /cases/{id}/key-images/{n}/rendered):
  // to whoever may download files
  const rendered = (fmt, ext, text) => el("a", { class: `key-${ext}`, "data-n": String(n),
    href: `/cases/${encodeURIComponent(doc.ID)}/key-images/${n}/rendered?format=${fmt}`, download: `key-image-${n + 1}.${ext}` }, text);
  // (not before an unknown case's reveal: the pictures carry the caption and the labels)
  const slides = mayDownload() && !hide ? el("span", { class: "key-files" }, rendered("png", "png", "PNG for slides"), " · ",
    rendered("jpeg", "jpg", "JPEG")) : null;
  const caption = editing ? "" : shownCaption;   // editing: the caption is the input
  return el("figure", { class: "key-image", "data-instance": k.Instance, "data-frame": String(k.Frame || 1) }, picture,
    caption || slides ? el("figcaption", {}, caption, caption && slides ? " · " : "", slides) : null);
}

// A collection as one bundle (GET /collections/{label}/bundle): a student's holds its published cases.
function collectionBundleLink(label) {
  return el("a", { class: "button secondary collection-bundle", "data-collection": label,
    href: `/collections/${encodeURIComponent(label)}/bundle`, download: `collection-${label}.zip` }, `Download collection bundle: ${label}`);
}

// Label -> number of cases in that collection (the teacher: any state), among the newest
// STUDY_CASES_SCAN cases; for the Labels page, which offers a bundle only where there are cases.
async function caseCollections() {
  const out = new Map();
  for (const c of await api("GET", `/cases?expand&limit=${STUDY_CASES_SCAN}`)) {
    for (const l of c.Collections || []) out.set(l, (out.get(l) || 0) + 1);
  }
  return out;
}

// the series of each key image, to open the viewer at it (one request per distinct instance)
async function keySeries(keys) {
  const out = new Map();
  await Promise.all([...new Set(keys.map(k => k.Instance))].map(async id => {
    try { out.set(id, (await api("GET", `/instances/${encodeURIComponent(id)}`)).ParentSeries); } catch (e) { /* gone */ }
  }));
  return out;
}

// "Open the full stack": the viewer on each series of the case's studies
async function stackCard(doc) {
  const box = el("div", { class: "card", id: "case-stacks" }, el("h3", {}, "The full stack"));
  const links = [];
  for (const sid of doc.Studies || []) {
    let series = [];
    try { series = await api("GET", `/studies/${encodeURIComponent(sid)}/series`); } catch (e) { continue; }
    for (const se of series) {
      const tags = se.MainDicomTags || {};
      links.push(el("a", { class: "button", href: viewerHref(se.ID, doc.ID), "data-series": se.ID },
        `Open the full stack: ${[tags.Modality, tags.SeriesDescription].filter(Boolean).join(" ") || "series"} (${(se.Instances || []).length} img)`));
    }
  }
  box.append(links.length ? el("div", { class: "actions" }, links) : el("p", { class: "muted" }, "No image series in this case yet."));
  return box;
}

// The case as files: a bundle to import on another board, and its key images as DICOM (a Key
// Object Selection and presentation states a workstation shows); the teacher can also store them
// in the archive, beside the images, for workstations that retrieve the study.
function caseDownloads(doc) {
  const out = el("div", { id: "case-store-message", "aria-live": "polite" });
  const id = encodeURIComponent(doc.ID);
  const keys = doc.KeyImages || [];
  const links = mayDownload() ? [
    el("a", { class: "button secondary", id: "case-bundle", href: `/cases/${id}/bundle`, download: `case-${doc.ID}.zip` }, "Case bundle (ZIP)"),
    keys.length ? el("a", { class: "button secondary", id: "case-kos", href: `/cases/${id}/key-object`, download: "" }, "Key object (DICOM)") : null,
    // a presentation state carries a key image's window, zoom, caption or annotations (keyobjects.presented)
    keys.some(k => k.Window || k.Zoom || k.Caption || (k.Annotations || []).length) ? el("a", { class: "button secondary",
      id: "case-gsps", href: `/cases/${id}/presentation-states`, download: "" }, "Presentation states (DICOM)") : null,
    ...(doc.Collections || []).filter(l => LABEL_RE.test(l)).map(collectionBundleLink)] : [];
  const store = isTeacher() && keys.length ? el("button", { class: "secondary", id: "case-store-kos", onclick: async () => {
    store.disabled = true;
    out.replaceChildren(message("info", "Storing…"));
    try {
      const r = await api("POST", `/cases/${id}/store-key-objects`, {});
      const ko = (r.KeyObjects || []).length, pr = (r.PresentationStates || []).length;
      out.replaceChildren(message("ok", `Stored in the archive: ${ko} key object${ko === 1 ? "" : "s"} and ` +
        `${pr} presentation state${pr === 1 ? "" : "s"}, in new series of the case's study: a DICOM workstation ` +
        "that retrieves the study gets them."));
    } catch (e) { out.replaceChildren(message("err", `Not stored: ${e.message}`)); } finally { store.disabled = false; }
  } }, "Store key objects in the archive") : null;
  if (!links.length && !store) return null;
  return el("div", { class: "card", id: "case-downloads" }, el("h3", {}, "Files"),
    el("div", { class: "actions" }, ...links.filter(Boolean), store), out);
}

function textSection(id, title, text) {
  return el("section", { class: "case-text", id }, el("h3", {}, title), el("p", { class: "prewrap" }, text));
}

// ------------------------------------------------------------------ a case's page

async function showCase(id, params) {
  const doc = await api("GET", `/cases/${encodeURIComponent(id)}`);
  const q = new URLSearchParams(params || "");
  const read = !isTeacher() || q.get("view") === "read";
  return read ? caseReading(doc) : caseEditing(doc, await caseVocabulary(), q.get("made"));
}

// The student's view: history and question first; findings and diagnosis only once revealed
// (not in the page before that, so a glance or a search of the page gives nothing away). An
// unknown case (doc.Unknown, MIRC's unknown presentation) also keeps its title, keywords,
// key-image captions and label text back until the reveal; the viewer is told of the reveal
// through this tab's sessionStorage.
const caseRevealKey = (id) => `pipacs-revealed:${id}`;
async function caseReading(doc) {
  const meta = [(doc.Modalities || []).join(", "), doc.BodyRegion, doc.Category, doc.Difficulty].filter(Boolean).join(" · ");
  const keys = doc.KeyImages || [];
  const unknown = !!doc.Unknown;
  const seriesOf = await keySeries(keys);
  const answer = el("div", { id: "case-answer", hidden: true });
  const keywords = el("p", { id: "case-keywords" });
  const keyGrid = el("div", { class: "grid", id: "key-images" });
  const remember = (open) => {
    try { if (open) sessionStorage.setItem(caseRevealKey(doc.ID), "1"); else sessionStorage.removeItem(caseRevealKey(doc.ID)); }
    catch (e) { /* private mode: the viewer keeps the labels back */ }
  };
  const showKnown = (open) => {   // what an unknown case keeps back (all of it shown for a known one)
    const shown = open || !unknown;
    const h = document.querySelector("#main h2");
    if (h) h.textContent = shown ? doc.Title || "Untitled case" : "Unknown case";
    keywords.replaceChildren(...(shown ? (doc.Keywords || []).map(w => el("span", { class: "tag" }, w)) : []));
    keywords.hidden = !keywords.firstChild;
    keyGrid.replaceChildren(...keys.map((k, n) => keyImageFigure(doc, k, n, seriesOf.get(k.Instance), false, !shown)));
  };
  const reveal = el("button", { id: "reveal", "aria-expanded": "false", "aria-controls": "case-answer", onclick: () => {
    const open = reveal.getAttribute("aria-expanded") !== "true";
    if (open && !answer.firstChild) {
      const parts = CASE_ANSWER_FIELDS.filter(f => (doc[f] || "").trim()).map(f => textSection(`case-${f}`, caseLabel(f), doc[f]));
      answer.append(...(parts.length ? parts : [el("p", { class: "muted" }, "The teacher has not written the answer yet.")]));
    }
    answer.hidden = !open;
    reveal.setAttribute("aria-expanded", open ? "true" : "false");
    reveal.textContent = open ? "Hide the answer" : revealWords;
    if (unknown) { remember(open); showKnown(open); }
  } });
  const revealWords = unknown ? "Reveal the case: title, findings and diagnosis" : "Reveal the findings and diagnosis";
  reveal.textContent = revealWords;
  remember(false);   // a page drawn anew starts unrevealed, and so does the viewer opened from it
  page(unknown ? "Unknown case" : doc.Title || "Untitled case",
    isTeacher() ? el("div", { class: "actions" }, el("a", { class: "button", id: "case-edit", href: caseHref(doc.ID) }, "Edit"),
      el("span", { class: "muted" }, "This is what students see", doc.State === "published" ? "." : " once it is published.",
        unknown ? " An unknown case: its title, keywords, captions and labels show only after the reveal." : "")) : null,
    isTeacher() && (doc.Studies || []).length ? prepareForClass({ Cases: [doc.ID] }, "this case") : null,
    el("div", { class: "card", id: "case-summary" },
      el("p", { class: "muted", id: "case-meta" }, meta || "—", doc.Author ? ` · by ${doc.Author}` : ""),
      keywords,
      (doc.History || "").trim() ? textSection("case-History", "Clinical history", doc.History) : null,
      (doc.Question || "").trim() ? textSection("case-Question", "Question", doc.Question) : null),
    keys.length ? el("div", { class: "card" }, el("h3", {}, "Key images"), keyGrid) : null,
    await stackCard(doc),
    el("div", { class: "card", id: "case-reveal" }, el("div", { class: "actions" }, reveal), answer),
    caseDownloads(doc));
  showKnown(false);
}

// The teacher's view: every field, the state, the key images with their captions.
// A save sends the fields this page changed and the "Updated" it read; when the case changed
// meanwhile (the viewer, another tab or iPad, a workstation's key object: 409), the page reads it
// again, applies its own changes onto it (key images by Instance and Frame, studies one by one),
// saves that and says so; fields it did not change show the stored values.
const CASE_SAVE_ATTEMPTS = 4;
const STUDY_PICK_PAGE = 50;   // studies the picker lists at a time (More lists the next ones)
function caseEditing(doc, vocab, made) {
  const f = {};
  let keys = (doc.KeyImages || []).map(k => ({ ...k }));
  let studies = [...(doc.Studies || [])];
  let keysChanged = false, dirty = false;
  const keyId = (k) => `${k.Instance}/${k.Frame || 1}`;
  let captionEdits = new Map(), removedKeys = new Set(), addedStudies = [], removedStudies = new Set();
  const out = el("div", { id: "case-message", "aria-live": "assertive" });
  const markDirty = () => { dirty = true; status.textContent = "Unsaved changes"; };
  for (const [name, label, kind] of CASE_TEXT_FIELDS) {
    f[name] = el(kind, { id: `case-${name}`, name, "aria-label": label, maxlength: kind === "input" ? 1000 : null,
      rows: kind === "textarea" ? (name === "History" || name === "Findings" || name === "Discussion" ? 5 : 3) : null });
  }
  const pick = (name, label, values) => {
    f[name] = el("select", { id: `case-${name}`, name }, el("option", { value: "" }, "(not set)"),
      values.map(v => el("option", { value: v }, v)));
    return el("label", {}, label, f[name]);
  };
  f.Keywords = el("input", { id: "case-Keywords", placeholder: "comma between keywords" });
  f.Collections = el("input", { id: "case-Collections", list: "case-collection-list", placeholder: "e.g. Session3-chest", autocapitalize: "none" });
  f.Author = el("input", { id: "case-Author" });
  f.Unknown = el("input", { id: "case-Unknown", type: "checkbox", role: "switch", class: "switch" });
  const status = el("span", { id: "case-dirty", class: "muted", "aria-live": "polite" });
  const state = el("span", { id: "case-state", class: `tag state-${doc.State}` }, doc.State === "published" ? "Published" : "Draft");

  // the editable fields, as the form has them and as a document has them (same shapes, to compare)
  const SIMPLE = [...CASE_TEXT_FIELDS.map(x => x[0]), "BodyRegion", "Category", "Difficulty", "Author"];
  const formValues = () => {
    const v = {};
    for (const name of SIMPLE) v[name] = f[name].value;
    v.Keywords = f.Keywords.value.split(",").map(x => x.trim()).filter(Boolean);
    v.Collections = f.Collections.value.split(/[\s,]+/).map(x => x.trim()).filter(Boolean);
    v.Unknown = f.Unknown.checked;
    return v;
  };
  const docValues = (d) => {
    const v = {};
    for (const name of SIMPLE) v[name] = d[name] || "";
    v.Keywords = d.Keywords || []; v.Collections = d.Collections || []; v.Unknown = !!d.Unknown;
    return v;
  };
  const fill = (name, value) => {
    if (name === "Keywords") f.Keywords.value = value.join(", ");
    else if (name === "Collections") f.Collections.value = value.join(" ");
    else if (name === "Unknown") f.Unknown.checked = !!value;
    else f[name].value = value;
  };
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  // the body for the case as `read`: this page's changes (against `doc`, the case as this page last
  // read or saved it) applied onto it
  const body = (read) => {
    const now = formValues(), was = docValues(doc), b = { Updated: read.Updated };
    for (const name of Object.keys(now)) if (!same(now[name], was[name])) b[name] = now[name];
    if (keysChanged) {
      b.KeyImages = (read.KeyImages || []).filter(k => !removedKeys.has(keyId(k))).map(k => Annot.keyImageForSaving(
        captionEdits.has(keyId(k)) ? { ...k, Caption: captionEdits.get(keyId(k)) } : k));
    }
    if (addedStudies.length || removedStudies.size) {
      const list = (read.Studies || []).filter(x => !removedStudies.has(x));
      b.Studies = [...list, ...addedStudies.filter(x => !list.includes(x))];
    }
    return b;
  };
  const clearInvalid = () => { for (const e of Object.values(f)) e.removeAttribute("aria-invalid"); };
  // the board's 400 names the field: mark it and put the cursor in it
  const showRefusal = (prefix, e, ...more) => {
    out.replaceChildren(message("err", `${prefix}: ${e.message}`), ...more);
    const named = Object.keys(f).sort((a, b) => b.length - a.length).find(n => (e.message || "").includes(n));
    if (named) { f[named].setAttribute("aria-invalid", "true"); f[named].focus(); }
    else if (/KeyImages|Caption/.test(e.message || "")) document.getElementById("case-keys")?.scrollIntoView();
  };
  const save = async () => {
    clearInvalid();
    const started = formValues();
    const bad = started.Collections.find(l => !LABEL_RE.test(l));
    if (bad) {
      showRefusal("Not saved", { message: `Collections: "${bad}" is not a collection name (letters, digits, - and _, at most 64)` });
      return false;
    }
    let read = doc, merged = false, saved = null;
    try {
      for (let attempt = 1; ; attempt++) {
        try { saved = await api("PUT", `/cases/${encodeURIComponent(doc.ID)}`, body(read)); break; } catch (e) {
          if (!(e instanceof ApiError) || e.status !== 409 || attempt >= CASE_SAVE_ATTEMPTS) throw e;
          read = await api("GET", `/cases/${encodeURIComponent(doc.ID)}`);   // changed elsewhere: again, onto it
          merged = true;
        }
      }
    } catch (e) {
      showRefusal("Not saved", e.status === 409 ? { message: "the case keeps changing elsewhere: reload the page (your text is still here)" } : e);
      return false;
    }
    // the form shows what is stored now: others' changes too, except what was typed during the save
    const now = formValues(), stored = docValues(saved);
    Object.keys(doc).forEach(k => delete doc[k]);
    Object.assign(doc, saved);
    for (const name of Object.keys(stored)) if (same(now[name], started[name])) fill(name, stored[name]);
    keys = (doc.KeyImages || []).map(k => ({ ...k })); studies = [...(doc.Studies || [])];
    keysChanged = false;
    captionEdits = new Map(); removedKeys = new Set(); addedStudies = []; removedStudies = new Set();
    dirty = Object.keys(stored).some(name => !same(formValues()[name], stored[name]));
    status.textContent = dirty ? "Unsaved changes" : "";
    const at = new Date().toLocaleTimeString();
    out.replaceChildren(message("ok", merged ? `Saved at ${at}. The case had changed since this page read it (the viewer, ` +
      "another tab or iPad): your changes were applied onto it and those changes are kept too; the page shows the case as stored now."
      : `Saved at ${at}.`));
    out.dataset.merged = merged ? "yes" : "no";   // for the tests: how the last save went, and how many
    out.dataset.saves = String(Number(out.dataset.saves || 0) + 1);
    drawKeys(); drawStudies();
    return true;
  };
  // a draft whose studies are not de-identified cannot be published: one tap anonymizes them
  // (POST /cases/{id}/anonymize: the teacher's de-identification defaults, the case's title as the
  // patient's name) and moves the case, its key images and annotations onto the copies
  const deidentify = el("button", { id: "case-deidentify", class: "secondary", onclick: async () => {
    if (dirty && !(await save())) return;
    deidentify.disabled = true;
    out.replaceChildren(message("info", "De-identifying the case's studies… (a large study takes a while)"));
    try {
      await api("POST", `/cases/${encodeURIComponent(doc.ID)}/anonymize`, {});
      goTo(caseHref(doc.ID, "made=deidentified"));
    } catch (e) { showRefusal("Not de-identified", e); deidentify.disabled = false; }
  } }, "De-identify the studies");
  const setState = async (action) => {
    if (dirty && !(await save())) return;
    try {
      Object.assign(doc, await api("POST", `/cases/${encodeURIComponent(doc.ID)}/${action}`, {}));
      state.className = `tag state-${doc.State}`;
      state.textContent = doc.State === "published" ? "Published" : "Draft";
      publish.textContent = doc.State === "published" ? "Unpublish" : "Publish";
      out.replaceChildren(message("ok", doc.State === "published" ? "Published: students can find and read this case."
        : "Unpublished: students no longer see this case."));
    } catch (e) {
      if (action === "publish" && e instanceof ApiError && e.status === 409 && /de-identif/i.test(e.message || "")) {
        showRefusal("Not published", e, el("p", { id: "case-deidentify-hint" },
          "Tap De-identify the studies: the board anonymizes them with your de-identification defaults (the case's title as the " +
          "patient's name), moves this case, its key images and their annotations onto the anonymized copies; then publish."),
          el("div", { class: "actions" }, deidentify));
      } else showRefusal(action === "publish" ? "Not published" : "Not unpublished", e);
    }
  };
  const publish = el("button", { id: "case-publish", class: "secondary", onclick: () => setState(doc.State === "published" ? "unpublish" : "publish") },
    doc.State === "published" ? "Unpublish" : "Publish");
  const remove = el("button", { id: "case-delete", class: "danger", onclick: async () => {
    if (!window.confirm(`Delete the case "${doc.Title || "untitled"}"? Its studies and images stay; the case's text and key images go. This cannot be undone.`)) return;
    try { await api("DELETE", `/cases/${encodeURIComponent(doc.ID)}`); goTo("#/cases?made=deleted"); }
    catch (e) { showRefusal("Not deleted", e); }
  } }, "Delete case");

  const keyBox = el("div", { id: "case-key-list" });
  const drawKeys = async () => {
    const seriesOf = await keySeries(keys);
    keyBox.replaceChildren(keys.length ? el("div", { class: "grid" }, keys.map((k, n) => {
      const caption = el("input", { class: "key-caption", "data-n": String(n), value: k.Caption || "", maxlength: 1000,
        "aria-label": `Caption of key image ${n + 1}`, placeholder: "caption" });
      caption.addEventListener("input", () => {
        k.Caption = caption.value; captionEdits.set(keyId(k), caption.value); keysChanged = true; markDirty();
      });
      const series = seriesOf.get(k.Instance);
      return el("div", { class: "key-edit" }, keyImageFigure(doc, k, n, series, true), caption,
        el("div", { class: "actions" },
          series ? el("a", { class: "button secondary", href: viewerHref(series, doc.ID, k) }, "Annotate") : null,
          el("button", { class: "secondary key-remove", "data-n": String(n), onclick: () => {
            keys.splice(n, 1); removedKeys.add(keyId(k)); keysChanged = true; markDirty(); drawKeys();
          } }, "Remove")),
        el("p", { class: "muted" }, `${(k.Annotations || []).length} annotation${(k.Annotations || []).length === 1 ? "" : "s"}`));
    })) : el("p", { class: "muted" }, "No key image yet: open the full stack, scroll to an image and tap Key image."));
  };
  const studyBox = el("div", { id: "case-study-list" });
  const studyWords = (s) => `${fmtName(s.PatientMainDicomTags.PatientName)} · ${s.MainDicomTags.StudyDescription || "(no description)"} · ${fmtDate(s.MainDicomTags.StudyDate)}`;
  const drawStudies = async () => {
    const rows = await Promise.all(studies.map(async sid => {
      let s = null;
      try { s = await api("GET", `/studies/${encodeURIComponent(sid)}`); } catch (e) { /* deleted meanwhile */ }
      const what = s ? studyWords(s) : `${sid} (not found)`;
      return el("li", {}, s ? el("a", { href: `#/study/${encodeURIComponent(sid)}` }, what) : what, " ",
        el("button", { class: "secondary", "data-remove-study": sid, onclick: () => {
          studies = studies.filter(x => x !== sid);
          if (addedStudies.includes(sid)) addedStudies = addedStudies.filter(x => x !== sid); else removedStudies.add(sid);
          markDirty(); drawStudies(); drawPicks();
        } }, "Remove from the case"));
    }));
    studyBox.replaceChildren(rows.length ? el("ul", {}, rows) : el("p", { class: "muted" }, "No study yet."));
  };

  // Adding a study: a search by patient name, patient ID or description (POST /tools/find, case-
  // insensitive), or every study, STUDY_PICK_PAGE at a time with More: never a silent cut.
  const pickQ = el("input", { id: "case-study-q", type: "search", "aria-label": "Find a study to add", autocomplete: "off",
    placeholder: "patient name, ID or description", enterkeyhint: "search" });
  const pickList = el("ul", { id: "case-study-picks", class: "case-picks" });
  const pickMore = el("div", { class: "actions", id: "case-study-more" });
  const pickSaid = el("p", { class: "muted", id: "case-study-said", "aria-live": "polite" });
  let picks = [], pickSeq = 0;
  const drawPicks = () => {
    pickList.replaceChildren(...picks.map(s => el("li", {}, el("span", {}, studyWords(s)), " ",
      studies.includes(s.ID) ? el("span", { class: "muted" }, "in the case")
        : el("button", { class: "secondary", "data-add-study": s.ID, onclick: () => {
          studies.push(s.ID);
          if (removedStudies.has(s.ID)) removedStudies.delete(s.ID); else addedStudies.push(s.ID);
          markDirty(); drawStudies(); drawPicks();
        } }, "Add to the case"))));
  };
  const findStudies = async (since) => {
    const mine = ++pickSeq, term = pickQ.value.trim().replace(/[*?\\]/g, "");
    pickSaid.textContent = "Looking…";
    let found, more = false;
    try {
      if (!term) {
        found = await api("POST", "/tools/find", { Level: "Study", Query: {}, Expand: true, Limit: STUDY_PICK_PAGE + 1, Since: since });
        more = found.length > STUDY_PICK_PAGE; found = found.slice(0, STUDY_PICK_PAGE);
      } else {   // one find a tag (a query's tags all have to match): their union
        const each = await Promise.all(["PatientName", "PatientID", "StudyDescription"].map(tag =>
          api("POST", "/tools/find", { Level: "Study", Query: { [tag]: `*${term}*` }, Expand: true, Limit: STUDY_PICK_PAGE + 1 })));
        more = each.some(x => x.length > STUDY_PICK_PAGE);
        const byId = new Map();
        for (const x of each) for (const st of x.slice(0, STUDY_PICK_PAGE)) byId.set(st.ID, st);
        found = [...byId.values()];
      }
    } catch (e) { if (mine === pickSeq) pickSaid.textContent = `The studies could not be listed: ${e.message}`; return; }
    if (mine !== pickSeq) return;
    picks = since ? [...picks, ...found] : found;
    drawPicks();
    pickSaid.textContent = !picks.length ? (term ? "No study matches." : "No study on the board.")
      : more && term ? `The first ${picks.length} matches: type more to narrow them.` : `${picks.length} stud${picks.length === 1 ? "y" : "ies"}${more ? " so far" : ""}.`;
    pickMore.replaceChildren(...(more && !term ? [el("button", { class: "secondary", id: "case-study-next",
      onclick: () => findStudies(picks.length) }, `More studies (the next ${STUDY_PICK_PAGE})`)] : []));
  };
  let pickTyping = null;
  pickQ.addEventListener("input", () => { clearTimeout(pickTyping); pickTyping = setTimeout(() => findStudies(0), CASE_SEARCH_DELAY_MS); });
  pickQ.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); clearTimeout(pickTyping); findStudies(0); } });
  const picker = el("details", { id: "case-add-study", ontoggle: () => { if (picker.open && !picks.length) findStudies(0); } },
    el("summary", {}, "Add a study…"), el("div", { class: "row" }, el("label", { class: "grow" }, "Find", pickQ)),
    pickSaid, pickList, pickMore);

  const field = (name) => el("label", { class: "wide" }, caseLabel(name), f[name]);
  const form = el("form", { id: "case-form", onsubmit: (ev) => { ev.preventDefault(); save(); }, oninput: markDirty, onchange: markDirty },
    el("div", { class: "card" }, field("Title"), field("History"), field("Question"),
      el("label", { class: "switch-row", for: "case-Unknown" }, f.Unknown,
        el("span", {}, el("strong", {}, "Unknown case"), el("span", { class: "muted" },
          " — students see \"Unknown case\" and no keywords, key-image captions or label text until they tap Reveal")))),
    el("div", { class: "card" }, el("h3", {}, "The answer (shown to students when they reveal it)"),
      ...CASE_ANSWER_FIELDS.map(field)),
    el("div", { class: "card" }, el("h3", {}, "Finding the case"),
      el("div", { class: "row" }, pick("BodyRegion", "Body region", vocab.BodyRegions || []),
        pick("Category", "Category", vocab.Categories || []), pick("Difficulty", "Difficulty", vocab.Difficulties || []),
        el("label", {}, "Author", f.Author)),
      el("label", { class: "wide" }, "Keywords", f.Keywords),
      el("label", { class: "wide" }, "Collections (published cases show in them)", f.Collections),
      el("datalist", { id: "case-collection-list" }),
      el("p", { class: "muted" }, "Modalities (from the studies): ", (doc.Modalities || []).join(", ") || "none yet")));
  for (const [name, value] of Object.entries(docValues(doc))) fill(name, value);   // the selects exist now
  api("GET", "/tools/labels").then(ls => {
    document.getElementById("case-collection-list")?.replaceChildren(...ls.map(l => el("option", { value: l })));
  }).catch(() => {});
  const notes = [];
  if (made === "deidentified") out.append(message("ok", "De-identified: the case now uses the anonymized copies of its studies, with its key images and annotations. You can publish it."));
  if (doc.DelayReason) notes.push(message("info", `Delay reason from the workstation: ${doc.DelayReason}`));
  if ((doc.Missing || []).length) notes.push(message("info", `${doc.Missing.length} referenced image(s) not received yet: they are added as they arrive.`));
  page("Edit case",
    el("div", { class: "card case-bar" }, el("div", { class: "actions" }, state,
      el("button", { id: "case-save", onclick: () => save() }, "Save"), publish,
      el("a", { class: "button secondary", id: "case-preview", href: caseHref(doc.ID, "view=read") }, "Student view"),
      remove, status), out, ...notes,
      (doc.Studies || []).length ? prepareForClass({ Cases: [doc.ID] }, "this case") : null),
    form,
    el("div", { class: "card", id: "case-keys" }, el("h3", {}, "Key images"), keyBox),
    el("div", { class: "card", id: "case-studies" }, el("h3", {}, "Studies"), studyBox, picker),
    caseDownloads(doc));
  drawKeys(); drawStudies();
  stackCard(doc).then(card => document.getElementById("case-studies")?.after(card));
}
