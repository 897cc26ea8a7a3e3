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
    if (!window.confirm(`This ${what} is used by the teaching case${ids.length === 1 ? "" : "s"} ${which}. ` +
      `Delete it anyway? It leaves ${ids.length === 1 ? "that case" : "those cases"}, with its key images; the rest of each case stays.`)) return null;
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
    bundle.replaceChildren(...(mayDownload() && cases.length && LABEL_RE.test(label) ? [collectionBundleLink(label)] : []));
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
      (c.Collections || []).map(l => el("span", { class: "tag" }, l)))));
}

async function newCase() {
  try {
    const doc = await api("POST", "/cases", { Title: "New case" });
    goTo(caseHref(doc.ID));
  } catch (e) { flash("err", `No case was made: ${e.message}`); }
}

// ------------------------------------------------------------------ a key image: its picture with the annotations drawn

function keyImageFigure(doc, k, n, series, editing) {
  const frame = (k.Frame || 1) - 1;
  const p = new URLSearchParams();
  if (k.Window && k.Window.Width > 0) { p.set("window-center", k.Window.Center); p.set("window-width", k.Window.Width); }
  const src = `/instances/${encodeURIComponent(k.Instance)}/frames/${frame}/rendered${p.toString() ? "?" + p : ""}`;
  const canvas = el("canvas", { "aria-hidden": "true" });
  const said = Annot.describe(k.Annotations);
  const img = el("img", { alt: `Key image ${n + 1}${k.Caption ? ": " + k.Caption : ""}${said ? ` (${said})` : ""}`, src, loading: "lazy" });
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
    Annot.drawAll(ctx, k.Annotations || [], map, { unit: dpr * Math.min(Math.max(w / 400, 0.6), 1) });
    box.dataset.annotations = String((k.Annotations || []).length);
  };
  img.addEventListener("load", paint);
  img.addEventListener("error", () => img.replaceWith(el("div", { class: "noimg" }, "no image")));
  if (window.ResizeObserver) new ResizeObserver(paint).observe(box);
  const picture = series ? el("a", { href: viewerHref(series, doc.ID, k), class: "key-open", title: "Open in the viewer at this image" }, box) : box;
  // the picture with its annotations burnt in, for slides (GET /cases/{id}/key-images/{n}/rendered):
  // to whoever may download files
  const rendered = (fmt, ext, text) => el("a", { class: `key-${ext}`, "data-n": String(n),
    href: `/cases/${encodeURIComponent(doc.ID)}/key-images/${n}/rendered?format=${fmt}`, download: `key-image-${n + 1}.${ext}` }, text);
  const slides = mayDownload() ? el("span", { class: "key-files" }, rendered("png", "png", "PNG for slides"), " · ",
    rendered("jpeg", "jpg", "JPEG")) : null;
  const caption = editing ? "" : k.Caption || "";   // editing: the caption is the input
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
  const read = !isTeacher() || new URLSearchParams(params || "").get("view") === "read";
  return read ? caseReading(doc) : caseEditing(doc, await caseVocabulary());
}

// The student's view: history and question first; findings and diagnosis only once revealed
// (not in the page before that, so a glance or a search of the page gives nothing away).
async function caseReading(doc) {
  const meta = [(doc.Modalities || []).join(", "), doc.BodyRegion, doc.Category, doc.Difficulty].filter(Boolean).join(" · ");
  const keys = doc.KeyImages || [];
  const seriesOf = await keySeries(keys);
  const answer = el("div", { id: "case-answer", hidden: true });
  const reveal = el("button", { id: "reveal", "aria-expanded": "false", "aria-controls": "case-answer", onclick: () => {
    const open = reveal.getAttribute("aria-expanded") !== "true";
    if (open && !answer.firstChild) {
      const parts = CASE_ANSWER_FIELDS.filter(f => (doc[f] || "").trim()).map(f => textSection(`case-${f}`, caseLabel(f), doc[f]));
      answer.append(...(parts.length ? parts : [el("p", { class: "muted" }, "The teacher has not written the answer yet.")]));
    }
    answer.hidden = !open;
    reveal.setAttribute("aria-expanded", open ? "true" : "false");
    reveal.textContent = open ? "Hide the answer" : "Reveal the findings and diagnosis";
  } }, "Reveal the findings and diagnosis");
  page(doc.Title || "Untitled case",
    isTeacher() ? el("div", { class: "actions" }, el("a", { class: "button", id: "case-edit", href: caseHref(doc.ID) }, "Edit"),
      el("span", { class: "muted" }, "This is what students see", doc.State === "published" ? "." : " once it is published.")) : null,
    el("div", { class: "card", id: "case-summary" },
      el("p", { class: "muted", id: "case-meta" }, meta || "—", doc.Author ? ` · by ${doc.Author}` : ""),
      (doc.Keywords || []).length ? el("p", {}, (doc.Keywords || []).map(w => el("span", { class: "tag" }, w))) : null,
      (doc.History || "").trim() ? textSection("case-History", "Clinical history", doc.History) : null,
      (doc.Question || "").trim() ? textSection("case-Question", "Question", doc.Question) : null),
    keys.length ? el("div", { class: "card" }, el("h3", {}, "Key images"),
      el("div", { class: "grid", id: "key-images" }, keys.map((k, n) => keyImageFigure(doc, k, n, seriesOf.get(k.Instance))))) : null,
    await stackCard(doc),
    el("div", { class: "card", id: "case-reveal" }, el("div", { class: "actions" }, reveal), answer),
    caseDownloads(doc));
}

// The teacher's view: every field, the state, the key images with their captions.
function caseEditing(doc, vocab) {
  const f = {};
  let keys = (doc.KeyImages || []).map(k => ({ ...k }));
  let studies = [...(doc.Studies || [])];
  let keysChanged = false, studiesChanged = false, dirty = false;
  // what this page changed in the key images: applied on save to the case as stored then, so the
  // annotations the viewer saved meanwhile (another tab, another iPad) are kept
  const keyId = (k) => `${k.Instance}/${k.Frame || 1}`;
  let captionEdits = new Map(), removedKeys = new Set();
  const out = el("div", { id: "case-message", "aria-live": "assertive" });
  const markDirty = () => { dirty = true; status.textContent = "Unsaved changes"; };
  for (const [name, label, kind] of CASE_TEXT_FIELDS) {
    f[name] = el(kind, { id: `case-${name}`, name, "aria-label": label, maxlength: kind === "input" ? 1000 : null,
      rows: kind === "textarea" ? (name === "History" || name === "Findings" || name === "Discussion" ? 5 : 3) : null });
    f[name].value = doc[name] || "";
  }
  const pick = (name, label, values) => {
    f[name] = el("select", { id: `case-${name}`, name }, el("option", { value: "" }, "(not set)"),
      values.map(v => el("option", { value: v, selected: doc[name] === v }, v)));
    return el("label", {}, label, f[name]);
  };
  f.Keywords = el("input", { id: "case-Keywords", value: (doc.Keywords || []).join(", "), placeholder: "comma between keywords" });
  f.Collections = el("input", { id: "case-Collections", value: (doc.Collections || []).join(" "), list: "case-collection-list",
    placeholder: "e.g. Session3-chest", autocapitalize: "none" });
  f.Author = el("input", { id: "case-Author", value: doc.Author || "" });
  const status = el("span", { id: "case-dirty", class: "muted", "aria-live": "polite" });
  const state = el("span", { id: "case-state", class: `tag state-${doc.State}` }, doc.State === "published" ? "Published" : "Draft");

  const body = () => {
    const b = {};
    for (const [name] of CASE_TEXT_FIELDS) b[name] = f[name].value;
    for (const name of ["BodyRegion", "Category", "Difficulty"]) b[name] = f[name].value;
    b.Author = f.Author.value;
    b.Keywords = f.Keywords.value.split(",").map(s => s.trim()).filter(Boolean);
    b.Collections = f.Collections.value.split(/[\s,]+/).map(s => s.trim()).filter(Boolean);
    if (studiesChanged) b.Studies = studies;
    return b;
  };
  const clearInvalid = () => { for (const e of Object.values(f)) e.removeAttribute("aria-invalid"); };
  // the board's 400 names the field: mark it and put the cursor in it
  const showRefusal = (prefix, e) => {
    out.replaceChildren(message("err", `${prefix}: ${e.message}`));
    const named = Object.keys(f).sort((a, b) => b.length - a.length).find(n => (e.message || "").includes(n));
    if (named) { f[named].setAttribute("aria-invalid", "true"); f[named].focus(); }
    else if (/KeyImages|Caption/.test(e.message || "")) document.getElementById("case-keys")?.scrollIntoView();
  };
  const save = async () => {
    clearInvalid();
    const b = body();
    const bad = b.Collections.find(l => !LABEL_RE.test(l));
    if (bad) {
      showRefusal("Not saved", { message: `Collections: "${bad}" is not a collection name (letters, digits, - and _, at most 64)` });
      return false;
    }
    try {
      if (keysChanged) {
        const now = await api("GET", `/cases/${encodeURIComponent(doc.ID)}`);
        b.KeyImages = (now.KeyImages || []).filter(k => !removedKeys.has(keyId(k))).map(k => Annot.keyImageForSaving(
          captionEdits.has(keyId(k)) ? { ...k, Caption: captionEdits.get(keyId(k)) } : k));
      }
      const saved = await api("PUT", `/cases/${encodeURIComponent(doc.ID)}`, b);
      Object.assign(doc, saved);
      keys = (doc.KeyImages || []).map(k => ({ ...k })); studies = [...(doc.Studies || [])];
      keysChanged = studiesChanged = dirty = false;
      captionEdits = new Map(); removedKeys = new Set();
      status.textContent = "";
      out.replaceChildren(message("ok", `Saved at ${new Date().toLocaleTimeString()}.`));
      drawKeys(); drawStudies();
      return true;
    } catch (e) { showRefusal("Not saved", e); return false; }
  };
  const setState = async (action) => {
    if (dirty && !(await save())) return;
    try {
      Object.assign(doc, await api("POST", `/cases/${encodeURIComponent(doc.ID)}/${action}`, {}));
      state.className = `tag state-${doc.State}`;
      state.textContent = doc.State === "published" ? "Published" : "Draft";
      publish.textContent = doc.State === "published" ? "Unpublish" : "Publish";
      out.replaceChildren(message("ok", doc.State === "published" ? "Published: students can find and read this case."
        : "Unpublished: students no longer see this case."));
    } catch (e) { showRefusal(action === "publish" ? "Not published" : "Not unpublished", e); }
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
  const drawStudies = async () => {
    const rows = await Promise.all(studies.map(async sid => {
      let s = null;
      try { s = await api("GET", `/studies/${encodeURIComponent(sid)}`); } catch (e) { /* deleted meanwhile */ }
      const what = s ? `${fmtName(s.PatientMainDicomTags.PatientName)} · ${s.MainDicomTags.StudyDescription || "(no description)"} · ${fmtDate(s.MainDicomTags.StudyDate)}` : `${sid} (not found)`;
      return el("li", {}, s ? el("a", { href: `#/study/${encodeURIComponent(sid)}` }, what) : what, " ",
        el("button", { class: "secondary", "data-remove-study": sid, onclick: () => {
          studies = studies.filter(x => x !== sid); studiesChanged = true; markDirty(); drawStudies();
        } }, "Remove from the case"));
    }));
    studyBox.replaceChildren(rows.length ? el("ul", {}, rows) : el("p", { class: "muted" }, "No study yet."));
  };
  const addStudy = el("select", { id: "case-add-study", "aria-label": "Add a study" }, el("option", { value: "" }, "Add a study…"));
  addStudy.addEventListener("change", () => {
    if (addStudy.value && !studies.includes(addStudy.value)) { studies.push(addStudy.value); studiesChanged = true; markDirty(); drawStudies(); }
    addStudy.value = "";
  });
  api("POST", "/tools/find", { Level: "Study", Query: {}, Expand: true, Limit: 500 }).then(all => {
    addStudy.append(...all.map(s => el("option", { value: s.ID },
      `${fmtName(s.PatientMainDicomTags.PatientName)} · ${s.MainDicomTags.StudyDescription || ""} · ${fmtDate(s.MainDicomTags.StudyDate)}`)));
  }).catch(() => {});

  const field = (name) => el("label", { class: "wide" }, caseLabel(name), f[name]);
  const form = el("form", { id: "case-form", onsubmit: (ev) => { ev.preventDefault(); save(); }, oninput: markDirty, onchange: markDirty },
    el("div", { class: "card" }, field("Title"), field("History"), field("Question")),
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
  api("GET", "/tools/labels").then(ls => {
    document.getElementById("case-collection-list")?.replaceChildren(...ls.map(l => el("option", { value: l })));
  }).catch(() => {});
  const notes = [];
  if (doc.DelayReason) notes.push(message("info", `Delay reason from the workstation: ${doc.DelayReason}`));
  if ((doc.Missing || []).length) notes.push(message("info", `${doc.Missing.length} referenced image(s) not received yet: they are added as they arrive.`));
  page("Edit case",
    el("div", { class: "card case-bar" }, el("div", { class: "actions" }, state,
      el("button", { id: "case-save", onclick: () => save() }, "Save"), publish,
      el("a", { class: "button secondary", id: "case-preview", href: caseHref(doc.ID, "view=read") }, "Student view"),
      remove, status), out, ...notes),
    form,
    el("div", { class: "card", id: "case-keys" }, el("h3", {}, "Key images"), keyBox),
    el("div", { class: "card", id: "case-studies" }, el("h3", {}, "Studies"), studyBox, el("div", { class: "row" }, addStudy)),
    caseDownloads(doc));
  drawKeys(); drawStudies();
  stackCard(doc).then(card => document.getElementById("case-studies")?.after(card));
}
