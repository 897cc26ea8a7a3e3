/* pipacs explorer: browse, search, upload, and the actions of each level, all through the REST API.
   Plain JavaScript, no build step, nothing loaded from elsewhere (classrooms are often offline). */
"use strict";

const main = document.getElementById("main");
let STATUS = null;
// Who this page's user is (GET /pipacs/session): the teacher, a student, or anyone (not let in
// yet). The page shows only what that role can do. With sign-in off, every client is the teacher.
let SESSION = { Role: "teacher", User: "", CSRF: "", StudentAccess: "open", StudentDownloads: true, CanSignIn: false };
const isTeacher = () => SESSION.Role === "teacher";
const isStudent = () => SESSION.Role === "student";
const mayDownload = () => isTeacher() || (isStudent() && SESSION.StudentDownloads);
const TEACHER_PAGES = new Set(["upload", "modalities", "labels", "audit", "password"]);

// ------------------------------------------------------------------ small helpers

// building elements (user text only through text nodes) and the API error: pagekit.js's, one copy
const { el, ApiError } = Kit;

// Headers of every request from our pages: no browser login dialog on a 401, and the session's
// token on anything that changes state.
function pageHeaders(method) {
  const h = { "X-Requested-With": "pipacs" };
  if (SESSION.CSRF && method !== "GET" && method !== "HEAD") h["X-Pipacs-CSRF"] = SESSION.CSRF;
  return h;
}

async function api(method, path, body, opts = {}) {
  const init = { method, headers: pageHeaders(method) };
  if (body !== undefined) {
    if (body instanceof Blob || body instanceof ArrayBuffer) {
      init.body = body;
      init.headers["Content-Type"] = "application/octet-stream";
    } else if (typeof body === "string") {
      init.body = body;
    } else {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
  }
  const r = await fetch(path, init);
  const text = await r.text();
  if (!r.ok) {
    if ((r.status === 401 || r.status === 403) && isTeacher() && SESSION.CanSignIn && path !== "/pipacs/session") {
      // the teacher's session ended meanwhile (a password change, a restart): redraw as who we are now,
      // so no teacher button is left on screen to be refused again
      loadSession().then(() => { if (!isTeacher()) route(); });
    }
    let message = text;
    try { const j = JSON.parse(text); message = j.Message || j.Details || text; } catch (e) { /* plain text */ }
    throw new ApiError(r.status, message || r.statusText);
  }
  if (opts.raw) return { text, headers: r.headers };
  if (opts.text) return text;
  return text ? JSON.parse(text) : null;
}

function fmtDate(d) {
  return d && d.length === 8 ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : (d || "");
}
// A preview the server cannot make (a report, an RT plan, pixels no codec here decodes): a
// label in its place, not a broken image.
function previewImg(src, alt) {
  return el("img", { alt, loading: "lazy", src, onerror: ev => {
    ev.target.replaceWith(el("div", { class: "noimg", title: alt }, "no image"));
  } });
}
function fmtName(n) { return (n || "").replace(/\^+/g, " ").trim() || "(no name)"; }
function fmtBytes(b) {
  if (b >= 2 ** 30) return (b / 2 ** 30).toFixed(1) + " GB";
  if (b >= 2 ** 20) return (b / 2 ** 20).toFixed(1) + " MB";
  return Math.round(b / 1024) + " KB";
}
function message(kind, text) { return el("div", { class: `msg ${kind}`, role: kind === "err" ? "alert" : "status" }, text); }
function flash(kind, text) {
  const box = document.getElementById("flash");
  if (box) { box.replaceChildren(message(kind, text)); }
}
function page(title, ...content) {
  main.replaceChildren(...[el("div", { id: "flash", "aria-live": "polite" }), title ? el("h2", {}, title) : null, ...content]
    .filter(x => x !== null && x !== undefined));
  main.focus({ preventScroll: true });
}
function notFound(what) {
  page("Not found", el("div", { class: "card" },
    message("err", `This ${what} does not exist any more (it may have been deleted).`),
    el("a", { href: "#/", class: "button" }, "Back to the list of studies")));
}
async function guarded(fn, what) {
  try { await fn(); } catch (e) {
    if (e instanceof ApiError && e.status === 404) notFound(what);
    else if (e instanceof ApiError && (e.status === 401 || e.status === 403)) await refusedPage(e);
    else page("Error", message("err", e.message || String(e)), el("a", { href: "#/" }, "Back"));
  }
}
function goTo(hash) {
  if (location.hash === hash || (hash === "#/" && !location.hash)) route();
  else location.hash = hash;
}
// Refused by the server: the session may have ended meanwhile (signed out elsewhere, a password
// change, a restart), so ask again who we are before saying why.
async function refusedPage(e) {
  await loadSession();
  if (SESSION.Role === "anyone") return showWelcome();
  if (!isTeacher()) return teacherOnly();
  page("Refused", el("div", { class: "card" }, message("err", e.message), el("a", { href: "#/", class: "button" }, "Back")));
}
function teacherOnly() {
  page("For the teacher", el("div", { class: "card", id: "teacher-only" },
    el("p", {}, "This page is for the teacher."),
    el("div", { class: "actions" }, SESSION.CanSignIn ? el("a", { href: "#/sign-in", class: "button" }, "Teacher sign in") : null,
      el("a", { href: "#/", class: "button secondary" }, "Back to the studies"))));
}

// ------------------------------------------------------------------ status in the header

async function loadStatus() {
  try {
    STATUS = await api("GET", "/pipacs/status");
  } catch (e) { return; }
  document.getElementById("app-name").textContent = STATUS.Name;
  document.title = STATUS.Name;
  const addr = (STATUS.Addresses.find(a => !a.Address.startsWith("127.")) || STATUS.Addresses[0] || {}).Address || location.hostname;
  const st = STATUS.Storage;
  const limit = st.LimitBytes ? fmtBytes(st.LimitBytes) : fmtBytes(st.UsedBytes + st.FreeBytes);
  document.getElementById("connect").replaceChildren(
    el("span", {}, "AE ", el("code", { id: "status-aet" }, STATUS.DicomAet), " · port ",
      el("code", { id: "status-port" }, STATUS.DicomPort), " · ", el("code", {}, addr),
      ` · ${fmtBytes(st.UsedBytes)} of ${limit} used`));
  if (STATUS.ConfigurationProblem) {
    document.getElementById("connect").append(el("div", { class: "msg err" }, STATUS.ConfigurationProblem));
  }
  showImport(STATUS.Import);
}

// a USB stick or CD being imported (pipacs-import@.service): progress in the header, polled while it runs.
// The banner is one element updated in place, so a screen reader hears changes, not a new region every poll.
let importTimer = null;
function showImport(imp) {
  clearTimeout(importTimer);
  let banner = document.getElementById("import-banner");
  let cls = null, parts = null;
  if (imp && imp.State === "running") {
    const pct = imp.Total ? Math.round(100 * imp.Done / imp.Total) : 0;
    cls = "msg info";
    parts = [`Importing from ${imp.Source}: ${imp.Done}/${imp.Total || "?"} files (${pct}%), ${imp.Stored} stored, ${imp.Rejected} rejected`,
      el("div", { class: "bar" }, el("div", { style: `width:${pct}%` }))];
    importTimer = setTimeout(pollImport, 2000);
  } else if (imp && imp.State === "done" && Date.now() - Date.parse(imp.Time.replace(" ", "T")) < 10 * 60 * 1000) {
    cls = `msg ${imp.Rejected ? "err" : "ok"}`;
    parts = [`Import from ${imp.Source} done: ${imp.Stored} stored, ${imp.AlreadyStored} already there, ${imp.Rejected} rejected.`];
  }
  if (!parts) { if (banner) banner.remove(); return; }
  if (!banner) {
    banner = el("div", { id: "import-banner", role: "status" });
    document.getElementById("connect").append(banner);
  }
  banner.className = cls;
  banner.replaceChildren(...parts);
}

async function pollImport() {
  try {
    STATUS = await api("GET", "/pipacs/status");
    showImport(STATUS.Import);
  } catch (e) {
    importTimer = setTimeout(pollImport, 5000);   // the appliance restarting or busy: keep the banner, ask again
  }
}

// ------------------------------------------------------------------ studies (home) and search

async function showStudies(params) {
  const q = new URLSearchParams(params || "");
  const form = el("form", { class: "card row", role: "search", onsubmit: (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const p = new URLSearchParams();
    for (const [k, v] of f.entries()) if (v) p.set(k, v);
    location.hash = "#/?" + p.toString();
  } },
    el("label", {}, "Patient name", el("input", { name: "name", value: q.get("name") || "", placeholder: "any" })),
    el("label", {}, "Patient ID", el("input", { name: "id", value: q.get("id") || "" })),
    el("label", {}, "From", el("input", { name: "from", type: "date", value: q.get("from") || "" })),
    el("label", {}, "To", el("input", { name: "to", type: "date", value: q.get("to") || "" })),
    el("label", {}, "Modality", el("input", { name: "modality", value: q.get("modality") || "", size: 5, placeholder: "CT" })),
    el("label", {}, "Label", el("select", { name: "label", id: "label-filter" }, el("option", { value: "" }, "any"))),
    el("button", { type: "submit" }, "Search"),
    el("a", { href: "#/", class: "button secondary" }, "Clear"));
  const list = el("div", { class: "card", id: "study-list" }, el("p", { class: "muted" }, "Searching…"));
  page("Studies", form, list);
  api("GET", "/tools/labels").then(labels => {
    const sel = document.getElementById("label-filter");
    for (const l of labels) sel.append(el("option", { value: l, selected: q.get("label") === l }, l));
  }).catch(() => {});

  const query = {};
  if (q.get("name")) query.PatientName = `*${q.get("name")}*`;
  if (q.get("id")) query.PatientID = q.get("id");
  if (q.get("from") || q.get("to")) {
    query.StudyDate = `${(q.get("from") || "").replaceAll("-", "")}-${(q.get("to") || "").replaceAll("-", "")}`;
  }
  if (q.get("modality")) query.ModalitiesInStudy = q.get("modality").toUpperCase();
  const body = { Level: "Study", Query: query, Expand: true, CaseSensitive: false, Limit: 500 };
  if (q.get("label")) body.Labels = [q.get("label")];
  let studies;
  try { studies = await api("POST", "/tools/find", body); } catch (e) {
    list.replaceChildren(message("err", e.message)); return;
  }
  studies.sort((a, b) => (b.MainDicomTags.StudyDate || "").localeCompare(a.MainDicomTags.StudyDate || ""));
  if (!studies.length) {
    list.replaceChildren(isTeacher() ? el("p", {}, "No study matches. ", el("a", { href: "#/upload" }, "Upload some files"),
      " or send a study to AE ", el("code", {}, STATUS ? STATUS.DicomAet : ""), ".")
      : el("p", {}, q.toString() ? "No study matches." : "The teacher has not shared a study yet."));
    return;
  }
  list.replaceChildren(el("p", { class: "muted" }, `${studies.length} stud${studies.length === 1 ? "y" : "ies"}`),
    el("table", {}, el("thead", {}, el("tr", {}, ["Patient", "Patient ID", "Date", "Description", "Series", "Images", "Labels", isTeacher() ? "Case" : null]
      .filter(Boolean).map(h => el("th", {}, h)))),
      el("tbody", {}, studies.map(s => el("tr", { class: "clickable", "data-id": s.ID },
        el("td", {}, el("a", { href: `#/study/${s.ID}` }, fmtName(s.PatientMainDicomTags.PatientName))),
        el("td", {}, s.PatientMainDicomTags.PatientID || ""),
        el("td", {}, fmtDate(s.MainDicomTags.StudyDate)),
        el("td", {}, s.MainDicomTags.StudyDescription || ""),
        el("td", {}, s.Series.length),
        // one tap to the images: the viewer opens the study's first series worth seeing (not a report, not the scout)
        el("td", {}, s.Series.length ? el("a", { class: "button view", href: `/viewer/study?study=${encodeURIComponent(s.ID)}`,
          "aria-label": `View ${s.MainDicomTags.StudyDescription || "the study"}` }, "View") : null),
        el("td", {}, (s.Labels || []).map(l => el("span", { class: "tag" }, l))),
        isTeacher() ? el("td", {}, makeCaseButton(s.ID, s.MainDicomTags.StudyDescription)) : null)))));   // cases.js
}

async function showPatients() {
  const patients = await api("GET", "/patients?expand");
  patients.sort((a, b) => fmtName(a.MainDicomTags.PatientName).localeCompare(fmtName(b.MainDicomTags.PatientName)));
  page("Patients", el("div", { class: "card" }, patients.length ? el("table", {},
    el("thead", {}, el("tr", {}, ["Patient", "Patient ID", "Birth date", "Studies"].map(h => el("th", {}, h)))),
    el("tbody", {}, patients.map(p => el("tr", { class: "clickable" },
      el("td", {}, el("a", { href: `#/patient/${p.ID}` }, fmtName(p.MainDicomTags.PatientName))),
      el("td", {}, p.MainDicomTags.PatientID || ""), el("td", {}, fmtDate(p.MainDicomTags.PatientBirthDate)),
      el("td", {}, p.Studies.length)))))
    : el("p", {}, "No patient yet.")));
}

// ------------------------------------------------------------------ actions of each level

const PLURAL = { Patient: "patients", Study: "studies", Series: "series", Instance: "instances" };

function actionBar(level, id, extra) {
  const base = `/${PLURAL[level]}/${id}`;
  const bar = el("div", { class: "actions", role: "group", "aria-label": `${level} actions` });
  if (level === "Series") bar.append(el("a", { class: "button", href: `/viewer/${id}`, id: "open-viewer" }, "Open viewer"));
  if (level === "Instance") {
    bar.append(el("a", { class: "button", href: `${base}/file`, download: `${id}.dcm`, id: "download-dcm" }, "Download .dcm"),
      el("a", { class: "button secondary", href: `#/tags/${id}`, id: "show-tags" }, "DICOM tags (JSON)"));
  }
  if (level !== "Instance" && mayDownload()) {
    // no name of ours on the archives: the board's Content-Disposition names them after patient and study
    bar.append(el("a", { class: "button secondary", href: `${base}/archive`, download: true, id: "download-zip" }, "Download ZIP"),
      el("a", { class: "button secondary", href: `${base}/media`, download: true, id: "download-media" }, "Download DICOMDIR"));
  }
  if (extra) bar.append(...extra.filter(Boolean));
  if (!isTeacher()) return bar;     // a student: reading only, and no button that would be refused
  if (level !== "Instance") {
    bar.append(el("button", { class: "secondary", id: "anonymize", onclick: () => anonymizeDialog(level, id, bar) }, "Anonymize…"));
  }
  bar.append(el("button", { class: "secondary", id: "send", onclick: () => sendDialog(level, id, bar) }, "Send to modality…"),
    el("button", { class: "danger", id: "delete", onclick: () => removeResource(level, id) }, "Delete"));
  return bar;
}

// The PS3.15 Annex E options a teaching case needs (POST /{level}/{id}/anonymize "Options"), the
// teacher's defaults (GET/PUT /pipacs/deidentification) preselected, and the case title that becomes
// the anonymized Patient's Name.
const DEID_CHOICES = [
  { name: "deid-dates", legend: "Dates", choices: [
    ["", "Remove (Basic Profile)"], ["RetainLongitudinalModifiedDates", "Shift per patient, intervals kept"],
    ["RetainLongitudinalFullDates", "Keep the real dates"]] },
  { name: "deid-descriptors", legend: "Descriptions", choices: [
    ["", "Remove (Basic Profile)"], ["CleanDescriptors", "Keep, with names, numbers and dates removed"],
    ["KeepDescriptors", "Keep as they are"]] },
];
const DEID_SWITCHES = [
  ["RetainPatientCharacteristics", "Keep age, sex, size and weight"],
  ["RetainDeviceIdentity", "Keep the device's identity (station, serial numbers)"],
  ["RetainInstitutionIdentity", "Keep the institution's name"],
];

function anonymizeOptions(box) {   // the ticked options; a group's first choice ("") is none
  return [...box.querySelectorAll("input:checked")].map(i => i.value).filter(Boolean);
}

async function anonymizeDialog(level, id, bar) {
  const old = document.getElementById("anonymize-box");
  if (old) { old.remove(); return; }
  let defaults = [];
  try { defaults = (await api("GET", "/pipacs/deidentification")).Options || []; } catch (e) { /* none: the Basic Profile */ }
  const box = el("div", { class: "card", id: "anonymize-box" });
  const out = el("div", { id: "anonymize-result", "aria-live": "polite" });
  for (const group of DEID_CHOICES) {
    const picked = group.choices.find(([v]) => v && defaults.includes(v));
    box.append(el("fieldset", { class: "choices" }, el("legend", {}, group.legend),
      group.choices.map(([value, text]) => el("label", { class: "choice" },
        el("input", { type: "radio", name: group.name, value, checked: picked ? picked[0] === value : !value }), text))));
  }
  box.append(el("fieldset", { class: "choices" }, el("legend", {}, "Patient and equipment"),
    DEID_SWITCHES.map(([value, text]) => el("label", { class: "choice" },
      el("input", { type: "checkbox", value, id: `deid-${value}`, checked: defaults.includes(value) }), text))));
  const title = el("input", { id: "anonymize-title", type: "text", maxlength: "64", placeholder: "e.g. Pneumothorax 3",
    autocomplete: "off" });
  const go = el("button", { id: "anonymize-go", onclick: async () => {
    go.disabled = true;
    out.replaceChildren(message("info", "Anonymizing…"));
    const body = { Deterministic: true, Options: anonymizeOptions(box) };
    if (title.value.trim()) body.CaseTitle = title.value.trim();
    try {
      const r = await api("POST", `/${PLURAL[level]}/${id}/anonymize`, body);
      location.hash = `#/${level.toLowerCase()}/${r.ID}?made=anonymized`;
    } catch (e) { out.replaceChildren(message("err", `Anonymization refused: ${e.message}`)); go.disabled = false; }
  } }, "Anonymize");
  const save = el("button", { class: "secondary", id: "anonymize-save-defaults", onclick: async () => {
    try {
      const r = await api("PUT", "/pipacs/deidentification", { Options: anonymizeOptions(box) });
      out.replaceChildren(message("ok", r.Options.length ? `Saved as your defaults: ${r.Options.join(", ")}.`
        : "Saved: no option by default (the Basic Profile alone)."));
    } catch (e) { out.replaceChildren(message("err", e.message)); }
  } }, "Save as my defaults");
  box.append(el("div", { class: "row" }, el("label", {}, "Case title (the anonymized patient's name)", title), go, save), out);
  bar.after(box);
}

async function removeResource(level, id) {
  if (!window.confirm(`Delete this ${level.toLowerCase()} and everything in it? This cannot be undone.`)) return;
  try {
    const r = await deleteAskingCases(`/${PLURAL[level]}/${id}`, level.toLowerCase());   // cases.js
    if (r === null) return;   // used by teaching cases, and the teacher kept it
    if (r && r.RemainingAncestor) location.hash = `#/${r.RemainingAncestor.Type.toLowerCase()}/${r.RemainingAncestor.ID}?made=deleted`;
    else location.hash = "#/?made=deleted";
  } catch (e) { flash("err", e.message); }
}

async function sendDialog(level, id, bar) {
  const old = document.getElementById("send-box");
  if (old) old.remove();
  const mods = await api("GET", "/modalities");
  const box = el("div", { class: "card", id: "send-box" });
  if (!mods.length) {
    box.append(el("p", {}, "No modality is known yet. ", el("a", { href: "#/modalities" }, "Add one"), "."));
    bar.after(box);
    return;
  }
  const sel = el("select", { id: "send-target", "aria-label": "Destination" }, mods.map(m => el("option", { value: m }, m)));
  const prog = el("progress", { max: 1, value: 0, id: "send-progress" });
  const out = el("div", { id: "send-result", "aria-live": "polite" });
  const go = el("button", { id: "send-go", onclick: async () => {
    go.disabled = true;
    // one store per series, so the bar moves while a study goes out
    const series = level === "Series" || level === "Instance" ? [id]
      : (await api("GET", `/${PLURAL[level]}/${id}/series`)).map(s => s.ID);
    prog.max = series.length; prog.value = 0;
    let sent = 0, failed = 0;
    for (const s of series) {
      try {
        const r = await api("POST", `/modalities/${encodeURIComponent(sel.value)}/store`, { Resources: [s], Synchronous: true });
        sent += (r.InstancesCount || 0) - (r.FailedInstancesCount || 0);
        failed += r.FailedInstancesCount || 0;
      } catch (e) { out.replaceChildren(message("err", e.message)); failed += 1; }
      prog.value += 1;
      out.replaceChildren(message(failed ? "err" : "info", `${sent} instance(s) sent${failed ? `, ${failed} failed` : ""}…`));
    }
    out.replaceChildren(message(failed ? "err" : "ok", `Done: ${sent} instance(s) sent to ${sel.value}${failed ? `, ${failed} failed` : ""}.`));
    go.disabled = false;
  } }, "Send");
  box.append(el("div", { class: "row" }, el("label", {}, "Send to", sel), go), prog, out);
  bar.after(box);
}

function madeMessage(params) {
  const made = new URLSearchParams(params || "").get("made");
  if (made === "anonymized") return message("ok", "Anonymized copy created: this is it. The original is unchanged.");
  if (made === "deleted") return message("ok", "Deleted.");
  return null;
}

// ------------------------------------------------------------------ levels

async function showPatient(id, params) {
  const p = await api("GET", `/patients/${id}`);
  const studies = await api("GET", `/patients/${id}/studies`);
  p.IsProtected = isTeacher() && (await api("GET", `/patients/${id}/protected`, undefined, { text: true })).trim() === "1";
  const prot = !isTeacher() ? null : el("button", { class: "secondary", id: "protect", "aria-pressed": p.IsProtected ? "true" : "false", onclick: async () => {
    const now = prot.getAttribute("aria-pressed") !== "true";
    await api("PUT", `/patients/${id}/protected`, now ? "1" : "0");
    prot.setAttribute("aria-pressed", now ? "true" : "false");
    prot.textContent = now ? "Unprotect" : "Protect";
    flash("ok", now ? "Protected: recycling will never delete this patient." : "No longer protected.");
  } }, p.IsProtected ? "Unprotect" : "Protect");
  page(`Patient ${fmtName(p.MainDicomTags.PatientName)}`, madeMessage(params),
    el("div", { class: "card" }, el("dl", { class: "kv" },
      el("dt", {}, "Patient ID"), el("dd", {}, p.MainDicomTags.PatientID || ""),
      el("dt", {}, "Birth date"), el("dd", {}, fmtDate(p.MainDicomTags.PatientBirthDate)),
      el("dt", {}, "Sex"), el("dd", {}, p.MainDicomTags.PatientSex || "")),
      actionBar("Patient", id, [prot])),
    el("div", { class: "card" }, el("h3", {}, "Studies"), el("table", {}, el("tbody", {}, studies.map(s => el("tr", { class: "clickable" },
      el("td", {}, el("a", { href: `#/study/${s.ID}` }, s.MainDicomTags.StudyDescription || "(no description)")),
      el("td", {}, fmtDate(s.MainDicomTags.StudyDate)), el("td", {}, `${s.Series.length} series`)))))));
}

// Series as a workstation lists them: by Series Number (none last), then description.
function bySeriesNumber(a, b) {
  const n = (se) => { const v = Number(se.MainDicomTags.SeriesNumber); return se.MainDicomTags.SeriesNumber === undefined || se.MainDicomTags.SeriesNumber === "" || !Number.isFinite(v) ? null : v; };
  const x = n(a), y = n(b);
  if (x !== y) return x === null ? 1 : y === null ? -1 : x - y;
  return (a.MainDicomTags.SeriesDescription || "").localeCompare(b.MainDicomTags.SeriesDescription || "");
}

async function showStudy(id, params) {
  const s = await api("GET", `/studies/${id}`);
  const teacher = isTeacher();
  const [series, stats, labels, published] = await Promise.all([api("GET", `/studies/${id}/series`).then(list => list.sort(bySeriesNumber)),
    teacher ? api("GET", `/studies/${id}/statistics`) : null, api("GET", `/studies/${id}/labels`),
    teacher ? api("GET", "/pipacs/published-labels") : []]);
  let note = "";
  if (teacher) {
    try { note = await api("GET", `/studies/${id}/metadata/Note`, undefined, { text: true }); } catch (e) { /* none yet */ }
  }
  const labelBox = el("div", { id: "labels" });
  const shown = new Set(published);
  const renderLabels = (ls) => labelBox.replaceChildren(...ls.map(l => el("span", { class: "tag", "data-label": l }, l,
    teacher ? publishToggle(l, shown, true) : null,
    teacher ? el("button", { "aria-label": `Remove label ${l}`, onclick: async () => {
      await api("DELETE", `/studies/${id}/labels/${encodeURIComponent(l)}`);
      renderLabels(await api("GET", `/studies/${id}/labels`));
    } }, "×") : null)));
  renderLabels(labels);
  // what a label is, as the server's rule (appliance/archive/caserules.py LABEL_RULE) says it
  const labelRule = "1 to 64 characters, each a letter A-Z or a-z, a digit, '-' or '_' (no spaces or accents), e.g. Session3-chest";
  const labelInput = el("input", { id: "label-input", placeholder: "e.g. Session3-chest", "aria-label": "New label",
    pattern: "[A-Za-z0-9_-]{1,64}", maxlength: 64, required: true, title: `A label is ${labelRule}`,
    oninvalid: () => flash("err", `Not a label: a label is ${labelRule}.`) });
  const addLabel = el("form", { class: "row", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      await api("PUT", `/studies/${id}/labels/${encodeURIComponent(labelInput.value.trim())}`, "");
      labelInput.value = "";
      renderLabels(await api("GET", `/studies/${id}/labels`));
    } catch (e) { flash("err", e.message); }
  } }, labelInput, el("button", { type: "submit", id: "label-add" }, "Add label"));
  const noteArea = el("textarea", { id: "note", "aria-label": "Case note" });
  noteArea.value = note;
  const saveNote = el("button", { id: "note-save", onclick: async () => {
    try {
      await api("PUT", `/studies/${id}/metadata/Note`, noteArea.value);
      flash("ok", "Note saved.");
    } catch (e) { flash("err", `The note was not saved: ${e.message}`); }
  } }, "Save note");
  const pt = s.PatientMainDicomTags;
  const count = teacher ? stats.CountInstances : series.reduce((n, se) => n + se.Instances.length, 0);
  const counts = `${teacher ? stats.CountSeries : series.length} series, ${count} ${count === 1 ? "instance" : "instances"}` +
    (teacher ? `, ${fmtBytes(Number(stats.DiskSize))}` : "");
  page(s.MainDicomTags.StudyDescription || "Study", madeMessage(params),
    el("div", { class: "card" }, el("dl", { class: "kv" },
      el("dt", {}, "Patient"), el("dd", {}, el("a", { href: `#/patient/${s.ParentPatient}` }, fmtName(pt.PatientName)), ` (${pt.PatientID || ""})`),
      el("dt", {}, "Date"), el("dd", {}, fmtDate(s.MainDicomTags.StudyDate)),
      el("dt", {}, "Accession"), el("dd", {}, s.MainDicomTags.AccessionNumber || ""),
      el("dt", {}, "Content"), el("dd", { id: "study-counts" }, counts)),
      actionBar("Study", id, [teacher ? makeCaseButton(id, s.MainDicomTags.StudyDescription) : null])),   // cases.js
    teacher ? await releaseCard(id) : null,
    teacher || labels.length ? el("div", { class: "card" }, el("h3", {}, "Labels"), labelBox, teacher ? addLabel : null) : null,
    teacher ? el("div", { class: "card" }, el("h3", {}, "Case note"), noteArea, el("div", { class: "actions" }, saveNote)) : null,
    await studyCasesCard(id),   // cases.js
    el("div", { class: "card" }, el("h3", {}, "Series"), el("div", { class: "grid" }, series.map(se => el("a", { class: "thumb", href: `#/series/${se.ID}` },
      previewImg(se.Instances.length ? `/instances/${se.Instances[0]}/preview` : "", `Preview of ${se.MainDicomTags.SeriesDescription || "series"}`),
      el("span", {}, `${se.MainDicomTags.SeriesNumber !== undefined && se.MainDicomTags.SeriesNumber !== "" ? `${se.MainDicomTags.SeriesNumber} · ` : ""}${se.MainDicomTags.Modality || ""} ${se.MainDicomTags.SeriesDescription || ""} · ${se.Instances.length} img`))))));
}

async function showSeries(id, params) {
  const se = await api("GET", `/series/${id}`);
  const instances = await api("GET", `/series/${id}/instances`);
  instances.sort((a, b) => (Number(a.MainDicomTags.InstanceNumber) || 0) - (Number(b.MainDicomTags.InstanceNumber) || 0));
  const preview = instances.length ? el("button", { class: "secondary", id: "preview", onclick: () => {
    location.hash = `#/instance/${instances[Math.floor(instances.length / 2)].ID}`;
  } }, "Preview") : null;
  page(`${se.MainDicomTags.Modality || ""} ${se.MainDicomTags.SeriesDescription || "Series"}`, madeMessage(params),
    el("div", { class: "card" }, el("p", {}, el("a", { href: `#/study/${se.ParentStudy}` }, "← Study"), ` · ${instances.length} instance(s)`),
      actionBar("Series", id, [preview])),
    el("div", { class: "card" }, el("div", { class: "grid" }, instances.slice(0, 200).map(i => el("a", { class: "thumb", href: `#/instance/${i.ID}` },
      previewImg(`/instances/${i.ID}/preview`, `Instance ${i.MainDicomTags.InstanceNumber || ""}`),
      el("span", {}, `#${i.MainDicomTags.InstanceNumber || "?"}`))))));
}

async function showInstance(id) {
  const i = await api("GET", `/instances/${id}`);
  page(`Instance ${i.MainDicomTags.InstanceNumber || ""}`,
    el("div", { class: "card" }, el("p", {}, el("a", { href: `#/series/${i.ParentSeries}` }, "← Series")), actionBar("Instance", id),
      el("img", { id: "instance-preview", alt: "Preview", src: `/instances/${id}/preview`, style: "max-width:100%;background:#000",
        onerror: async ev => {   // say why, from the server's answer (no pixel data, a codec missing here)
          let why = "";
          try { why = (await (await fetch(`/instances/${id}/preview`, { headers: pageHeaders("GET") })).json()).Message || ""; } catch (e) { /* keep it short */ }
          ev.target.replaceWith(el("p", { id: "instance-noimg", class: "muted" }, `No image${why ? ": " + why : ""}`));
        } })));
}

async function showTags(id) {
  const tags = await api("GET", `/instances/${id}/tags?simplify`);
  page("DICOM tags", el("div", { class: "card" }, el("p", {}, el("a", { href: `#/instance/${id}` }, "← Instance"), " · ",
    el("a", { href: `/instances/${id}/tags`, download: `${id}.json` }, "Download JSON")),
    el("pre", { class: "json", id: "tags-json" }, JSON.stringify(tags, null, 2))));
}

// ------------------------------------------------------------------ upload

function showUpload() {
  const files = el("input", { type: "file", multiple: true, id: "upload-files", "aria-label": "Choose DICOM or ZIP files" });
  const folder = el("input", { type: "file", multiple: true, webkitdirectory: true, id: "upload-folder", "aria-label": "Choose a folder" });
  const drop = el("div", { class: "drop", id: "drop", tabindex: "0" }, "Drop DICOM files, folders or ZIPs here");
  const report = el("div", { id: "upload-report", "aria-live": "polite" });
  page("Upload", el("div", { class: "card" },
    el("div", { class: "row" }, el("label", {}, "Files (DICOM or ZIP)", files), el("label", {}, "A whole folder (a CD)", folder)),
    el("p", {}, drop), report));
  const start = (list) => uploadAll(list, report);
  files.addEventListener("change", () => start([...files.files]));
  folder.addEventListener("change", () => start([...folder.files]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault(); drop.classList.remove("over");
    start(await droppedFiles(e.dataTransfer));
  });
}

async function droppedFiles(dt) {
  const out = [];
  const walk = async (entry) => {
    if (entry.isFile) out.push(await new Promise((ok, ko) => entry.file(ok, ko)));
    else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, ko) => reader.readEntries(ok, ko));
        if (!batch.length) break;
        for (const c of batch) await walk(c);
      }
    }
  };
  const entries = [...dt.items].map(i => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  if (entries.length) { for (const e of entries) await walk(e); return out; }
  return [...dt.files];
}

// A case bundle (GET /cases/{id}/bundle) is a ZIP whose first member is bundle.json: its local
// header names it at byte 30. Such a file goes to POST /cases/import, not to /instances.
async function isCaseBundle(f) {
  if (f.size < 41) return false;
  const b = new Uint8Array(await f.slice(0, 64).arrayBuffer());
  if (b[0] !== 0x50 || b[1] !== 0x4b || b[2] !== 3 || b[3] !== 4) return false;
  const n = b[26] | (b[27] << 8);
  return n === 11 && new TextDecoder().decode(b.slice(30, 41)) === "bundle.json";
}

async function uploadAll(list, report) {
  const bar = el("progress", { max: list.length, value: 0, id: "upload-progress" });
  const line = el("p", { id: "upload-summary" });
  const errors = el("ul", { id: "upload-errors" });
  const retryBox = el("div", {});
  report.replaceChildren(bar, line, errors, retryBox);
  const t0 = performance.now();
  let stored = 0, already = 0, bytes = 0;
  const failed = [], retry = [];
  const cases = [];   // [case ID, status, problems] of the case bundles among the files
  for (const [k, f] of list.entries()) {
    try {
      if (await isCaseBundle(f)) {
        const r = await fetch("/cases/import", { method: "POST", body: f,
          headers: { ...pageHeaders("POST"), "Content-Type": "application/zip" } });
        const text = await r.text();
        let body = null;
        try { body = JSON.parse(text); } catch (e) { /* not JSON */ }
        if (!r.ok) failed.push([f.name, (body && (body.Message || body.Details)) || text]);
        else {
          stored += body.Instances.Stored; already += body.Instances.AlreadyStored;
          for (const c of body.Cases) cases.push([c.ID, c.Status, c.Problems]);
          for (const p of body.Problems || []) failed.push([f.name, p]);
        }
        bytes += f.size;
      } else {
        const r = await fetch("/instances", { method: "POST", body: f,
          headers: { ...pageHeaders("POST"), "Content-Type": "application/octet-stream" } });
        const text = await r.text();
        let body = null;
        try { body = JSON.parse(text); } catch (e) { /* not JSON */ }
        if (!r.ok) {
          failed.push([f.webkitRelativePath || f.name, (body && (body.Message || body.Details)) || text]);
        } else {
          const answers = Array.isArray(body) ? body : [body];
          // the members of a ZIP not stored come beside Orthanc's array, in X-Pipacs-Not-Stored
          let notStored = [];
          try { notStored = JSON.parse(r.headers.get("X-Pipacs-Not-Stored") || "[]"); } catch (e) { /* none */ }
          for (const a of answers.concat(notStored)) {
            if (a.Status === "Success") stored++;
            else if (a.Status === "AlreadyStored") already++;
            else failed.push([`${f.name}${a.Filename ? ":" + a.Filename : ""}`, a.Message || a.Status]);
          }
          const more = Number(r.headers.get("X-Pipacs-Not-Stored-Count") || 0) - notStored.length;
          if (more > 0) failed.push([f.name, `${more} more members not stored (see the log)`]);
        }
        bytes += f.size;
      }
    } catch (e) {
      retry.push(f);   // the network went away: keep it for a retry
    }
    bar.value = k + 1;
    const secs = (performance.now() - t0) / 1000;
    line.textContent = `${k + 1}/${list.length} files · ${stored} stored, ${already} already stored, ${failed.length} refused` +
      `${cases.length ? ` · ${cases.filter(c => c[1] === "Imported").length} case(s) imported` : ""}` +
      `${retry.length ? `, ${retry.length} not sent` : ""} · ${(bytes / 2 ** 20 / Math.max(secs, 0.001)).toFixed(1)} MB/s`;
  }
  errors.replaceChildren(...failed.map(([name, why]) => el("li", {}, el("strong", {}, name), `: ${why}`)),
    ...cases.map(c => caseImportItem(...c)));   // cases.js: each case of a bundle, with what to do about it
  if (retry.length) {
    retryBox.replaceChildren(message("err", `${retry.length} file(s) could not be sent (network). What was sent is kept.`),
      el("button", { id: "upload-retry", onclick: () => uploadAll(retry, report) }, `Retry ${retry.length} file(s)`));
  } else {
    const refusedCases = cases.filter(c => c[1] === "Refused").length;
    retryBox.replaceChildren(message(failed.length || refusedCases ? "err" : "ok", `Done: ${stored} stored` +
      `${failed.length ? `, ${failed.length} refused (listed above)` : ""}` +
      `${refusedCases ? `, ${refusedCases} case${refusedCases === 1 ? "" : "s"} of a bundle not imported (listed above)` : ""}.`),
      el("a", { href: "#/", class: "button secondary" }, "See the studies"));
  }
  loadStatus();
}

// ------------------------------------------------------------------ modalities and connection details

async function showModalities() {
  const mods = await api("GET", "/modalities?expand");
  const out = el("div", { id: "modality-result", "aria-live": "polite" });
  const rows = Object.entries(mods).map(([name, m]) => el("tr", {},
    el("td", {}, name), el("td", {}, m.AET), el("td", {}, m.Host), el("td", {}, m.Port),
    el("td", {}, el("div", { class: "actions" },
      el("button", { class: "secondary", "data-echo": name, onclick: async () => {
        out.replaceChildren(message("info", `Echo ${name}…`));
        try { await api("POST", `/modalities/${encodeURIComponent(name)}/echo`, "{}"); out.replaceChildren(message("ok", `${name} answered the C-ECHO.`)); }
        catch (e) { out.replaceChildren(message("err", `${name} did not answer: ${e.message}`)); }
      } }, "Echo"),
      el("button", { class: "danger", "data-remove": name, onclick: async () => {
        if (!window.confirm(`Remove modality ${name}?`)) return;
        await api("DELETE", `/modalities/${encodeURIComponent(name)}`); showModalities();
      } }, "Remove")))));
  const f = {
    name: el("input", { id: "mod-name", required: true }), aet: el("input", { id: "mod-aet", required: true, maxlength: 16 }),
    host: el("input", { id: "mod-host", required: true }), port: el("input", { id: "mod-port", type: "number", required: true, value: "104", min: 1, max: 65535 }),
  };
  const form = el("form", { class: "row", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      await api("PUT", `/modalities/${encodeURIComponent(f.name.value)}`, { AET: f.aet.value, Host: f.host.value, Port: Number(f.port.value) });
      showModalities();
    } catch (e) { out.replaceChildren(message("err", e.message)); }
  } }, el("label", {}, "Name", f.name), el("label", {}, "AE title", f.aet), el("label", {}, "Host", f.host),
    el("label", {}, "Port", f.port), el("button", { type: "submit", id: "mod-add" }, "Add modality"));
  page("Modalities", el("div", { class: "card" }, out,
    rows.length ? el("table", {}, el("thead", {}, el("tr", {}, ["Name", "AE title", "Host", "Port", ""].map(h => el("th", {}, h)))), el("tbody", {}, rows))
      : el("p", {}, "No modality yet. In classroom mode, iPads that C-MOVE are added by themselves.")),
    el("div", { class: "card" }, el("h3", {}, "Add a DICOM node"), form));
}

async function showAbout() {
  await loadStatus();
  const s = STATUS;
  const addrs = s.Addresses.filter(a => !a.Address.startsWith("127.")).map(a => a.Address);
  const host = (s.Zeroconf && s.Zeroconf.HostName) || addrs[0] || location.hostname;
  page("Connect a viewer", el("div", { class: "card" }, el("dl", { class: "kv", id: "connect-details" },
    el("dt", {}, "AE title"), el("dd", {}, el("code", {}, s.DicomAet)),
    el("dt", {}, "DICOM port"), el("dd", {}, el("code", {}, s.DicomPort)),
    el("dt", {}, "Addresses"), el("dd", {}, addrs.length ? addrs.map(a => el("code", {}, a, " ")) : "this machine only"),
    el("dt", {}, "Bonjour name"), el("dd", {}, s.Zeroconf ? el("code", {}, s.Zeroconf.HostName) : "off"),
    el("dt", {}, "Web"), el("dd", {}, el("code", {}, `http://${host}:${s.HttpPort}/`)),
    el("dt", {}, "WADO-URI"), el("dd", {}, el("code", {}, `http://${host}:${s.HttpPort}${s.WadoUrl}`)),
    el("dt", {}, "DICOMweb"), el("dd", {}, el("code", {}, `http://${host}:${s.HttpPort}${s.DicomWebRoot}`)),
    el("dt", {}, "Classroom mode"), el("dd", {}, s.ClassroomMode ? "on: any iPad may query and retrieve" : "off"),
    el("dt", {}, "Storage"), el("dd", {}, `${s.Storage.Studies} studies, ${fmtBytes(s.Storage.UsedBytes)} used, ${fmtBytes(s.Storage.FreeBytes)} free on the card`)),
    el("div", { class: "grid", id: "qr-codes", style: "margin-top:1rem" }, qrCards(s, host))),
    networkCard(s.Network));
}

function qrImage(text, label) {
  return el("figure", { class: "card", style: "margin:0;text-align:center" },
    el("img", { src: `/pipacs/qr.svg?text=${encodeURIComponent(text)}`, alt: `QR code: ${label}`, style: "width:100%;max-width:260px" }),
    el("figcaption", {}, label));
}

function qrCards(s, host) {
  const cards = [qrImage(`http://${host}:${s.HttpPort}/`, `Web page: http://${host}:${s.HttpPort}/`)];
  const n = s.Network;
  if (n && n.Mode === "hotspot") {
    const esc = (x) => x.replace(/([\\;,:"])/g, "\\$1");
    const wifi = `WIFI:T:${n.HotspotPassphrase ? "WPA" : "nopass"};S:${esc(n.HotspotSsid)};P:${esc(n.HotspotPassphrase || "")};;`;
    cards.unshift(qrImage(wifi, `Join the Wi-Fi "${n.HotspotSsid}"${n.HotspotPassphrase ? ` (password ${n.HotspotPassphrase})` : ""}`));
  }
  return cards;
}

function networkCard(n) {
  if (!n) return el("div", { class: "card muted", id: "network" }, "Network: managed by the system (not the appliance image).");
  return el("div", { class: "card", id: "network" }, el("h3", {}, "Network"),
    el("p", {}, el("strong", {}, n.Mode), ` — ${n.Reason}`),
    (n.Problems || []).map(p => message("err", p)));
}

// ------------------------------------------------------------------ classroom: who is here, and the teacher's switches

async function loadSession() {
  try { SESSION = await api("GET", "/pipacs/session"); } catch (e) { /* keep what we knew */ }
  drawChrome();
}

// The header's links and the account line, built from the role: a student gets no teacher link.
function drawChrome() {
  const links = [["#/", "Studies"], ["#/cases", "Cases"], ["#/patients", "Patients"]];
  // teaching sessions have their own pages (sessions.js); a student joins one with its code
  if (isTeacher()) links.push(["/app/sessions.html#/", "Sessions"]);
  else links.push(["/join", "Join a session"]);
  if (isTeacher()) links.push(["#/upload", "Upload"], ["#/labels", "Labels"], ["#/modalities", "Modalities"]);
  if (isTeacher() && SESSION.CanSignIn) links.push(["#/audit", "Audit"]);
  if (SESSION.Role !== "anyone") links.push(["#/about", "Connect"]);
  document.getElementById("nav").replaceChildren(...links.map(([href, text]) => el("a", { href }, text)));
  const acct = document.getElementById("account");
  clearInterval(windowTimer);
  if (isTeacher()) {
    acct.replaceChildren(...[
      el("span", { id: "signed-in-as" }, SESSION.CanSignIn ? ["Signed in as ", el("strong", {}, SESSION.User || "teacher")]
        : "Teacher (sign-in is off on this appliance)"),
      SESSION.CanSignIn ? el("a", { href: "#/password", id: "change-password", class: "button secondary" }, "Change password") : null,
      SESSION.CanSignIn ? el("button", { id: "sign-out", class: "secondary", onclick: signOut }, "Sign out") : null,
      el("span", { id: "upload-window", class: "window" }),
      SESSION.StudentAccess === "code" && SESSION.CanSignIn ? el("span", { id: "room-code-box" }) : null].filter(Boolean));
    refreshUploadWindow();
    if (document.getElementById("room-code-box")) {
      api("GET", "/pipacs/room-code").then(r => {
        document.getElementById("room-code-box").replaceChildren("Room code for students: ", el("strong", { id: "room-code" }, r.Code));
      }).catch(() => {});
    }
  } else {
    acct.replaceChildren(...[el("span", { id: "signed-in-as" }, isStudent() ? "Student view" : "Not signed in"),
      SESSION.CanSignIn ? el("a", { href: "#/sign-in", id: "sign-in-link", class: "button secondary" }, "Teacher sign in") : null]
      .filter(Boolean));
  }
}

async function signOut() {
  try { await api("POST", "/pipacs/sign-out", ""); } catch (e) { /* signed out anyway below */ }
  await loadSession();
  loadStatus();
  goTo("#/");
}

// The DICOM upload window: iPads and modalities that are not registered may send only while it is
// open. One element per part, updated in place: the countdown ticks without re-creating buttons.
let windowTimer = null, windowUntil = 0, windowOpen = null;
async function refreshUploadWindow() {
  try { showWindow(await api("GET", "/pipacs/upload-window")); } catch (e) { /* not the teacher any more */ }
}
async function setUploadWindow(method, body) {
  try { showWindow(await api(method, "/pipacs/upload-window", body)); }
  catch (e) { flash("err", `The upload window did not change: ${e.message}`); }
}
function fmtClock(secs) { return `${Math.floor(secs / 60)}:${String(secs % 60).padStart(2, "0")}`; }
function showWindow(w) {
  const box = document.getElementById("upload-window");
  if (!box) return;
  windowUntil = Date.now() + w.SecondsLeft * 1000;
  if (w.Open !== windowOpen || !box.firstChild) {
    windowOpen = w.Open;
    box.replaceChildren(...(w.Open
      ? [el("span", { id: "upload-window-left", role: "timer", "aria-live": "off" }),
        el("button", { class: "secondary", id: "upload-window-close", onclick: () => setUploadWindow("DELETE") }, "Stop DICOM uploads")]
      : [el("button", { class: "secondary", id: "upload-window-open", onclick: () => setUploadWindow("PUT", { Minutes: 15 }) },
        "Accept DICOM uploads for 15 min")]));
  }
  clearInterval(windowTimer);
  if (w.Open) { tickWindow(); windowTimer = setInterval(tickWindow, 1000); }
}
function tickWindow() {
  const left = Math.max(0, Math.ceil((windowUntil - Date.now()) / 1000));
  const span = document.getElementById("upload-window-left");
  if (span) span.textContent = `DICOM uploads open: ${fmtClock(left)} left`;
  if (!left || !span) { clearInterval(windowTimer); if (span) refreshUploadWindow(); }
}

// A label published to students: every study carrying it is shown to them (a collection).
function publishToggle(label, shown, compact) {
  const b = el("button", { class: compact ? "publish" : "secondary", "data-publish": label, "aria-pressed": shown.has(label) ? "true" : "false",
    title: "Publish to students: every study with this label is shown to them", onclick: async () => {
      const now = b.getAttribute("aria-pressed") !== "true";
      try {
        await api(now ? "PUT" : "DELETE", `/pipacs/published-labels/${encodeURIComponent(label)}`, now ? "" : undefined);
        if (now) shown.add(label); else shown.delete(label);
        b.setAttribute("aria-pressed", now ? "true" : "false");
        b.textContent = publishText(now, compact);
        flash("ok", now ? `Label ${label} is published: students see its studies (once de-identified).` : `Label ${label} is no longer published.`);
      } catch (e) { flash("err", e.message); }
    } }, publishText(shown.has(label), compact));
  return b;
}
function publishText(on, compact) {
  if (compact) return on ? "· shown to students" : "· publish";
  return on ? "Published to students" : "Publish to students";
}

// A study's release: whether students can actually see it (released and de-identified), and why not.
async function releaseCard(id) {
  const status = el("div", { id: "release-status", "aria-live": "polite" });
  const btn = el("button", { id: "release-toggle", class: "secondary", "aria-pressed": "false" });
  const draw = async () => {
    const r = await api("GET", `/studies/${id}/released`, undefined, { raw: true });
    const released = r.text.trim() === "1";
    const visible = r.headers.get("X-Pipacs-Visible-To-Students") === "1";
    btn.setAttribute("aria-pressed", released ? "true" : "false");
    btn.textContent = released ? "Stop releasing to students" : "Release to students";
    status.replaceChildren(visible
      ? message("ok", released ? "Students can see this study." : "Students can see this study: it carries a label published to them.")
      : released ? message("err", "Released, but students cannot see it: not every image in it is de-identified. " +
          "Anonymize the study, then release the anonymized copy.")
        : message("info", "Not released: students cannot see this study."));
  };
  btn.addEventListener("click", async () => {
    btn.disabled = true;
    try {
      await api("PUT", `/studies/${id}/released`, btn.getAttribute("aria-pressed") === "true" ? "0" : "1");
      await draw();
    } catch (e) { flash("err", e.message); } finally { btn.disabled = false; }
  });
  await draw();
  return el("div", { class: "card", id: "release" }, el("h3", {}, "Students"), status, el("div", { class: "actions" }, btn));
}

// ------------------------------------------------------------------ signing in, the room code, the teacher's pages

function signInCard() {
  const user = el("input", { id: "signin-user", name: "username", autocomplete: "username", autocapitalize: "none",
    autocorrect: "off", spellcheck: "false", value: "teacher", required: true });
  const pw = el("input", { id: "signin-password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const out = el("div", { id: "signin-message", "aria-live": "assertive" });
  const go = el("button", { type: "submit", id: "signin-go" }, "Sign in");
  const form = el("form", { class: "row", id: "signin-form", onsubmit: async (ev) => {
    ev.preventDefault();
    go.disabled = true;
    out.replaceChildren();
    try {
      await api("POST", "/pipacs/sign-in", { User: user.value.trim() || "teacher", Password: pw.value });
      pw.value = "";
      await loadSession();
      loadStatus();
      goTo("#/");
    } catch (e) {
      pw.value = "";
      out.replaceChildren(message("err", e.status === 401 ? "Wrong user name or password." : e.message));
    } finally { go.disabled = false; }
  } }, el("label", {}, "User", user), el("label", {}, "Password", pw), go);
  return el("div", { class: "card", id: "signin" }, el("h3", {}, "Teacher sign in"), form, out);
}

function roomCodeCard() {
  const code = el("input", { id: "room-code-input", inputmode: "numeric", autocomplete: "off", required: true, maxlength: 32, "aria-label": "Room code" });
  const out = el("div", { id: "room-code-message", "aria-live": "assertive" });
  return el("div", { class: "card", id: "join" }, el("h3", {}, "Students: the room code"),
    el("p", {}, "Type the code the teacher shows."),
    el("form", { class: "row", onsubmit: async (ev) => {
      ev.preventDefault();
      out.replaceChildren();
      try {
        await api("POST", "/pipacs/join", { Code: code.value.trim() });
        await loadSession();
        loadStatus();
        goTo("#/");
      } catch (e) { out.replaceChildren(message("err", e.message)); }
    } }, code, el("button", { type: "submit", id: "room-join" }, "Join")), out);
}

// Not let in yet (StudentAccess code or off): the forms that let one in, nothing else.
function showWelcome() {
  page("Welcome", SESSION.StudentAccess === "code" ? roomCodeCard()
    : el("div", { class: "card" }, el("p", {}, "This appliance is open to teachers only: sign in.")),
  SESSION.CanSignIn ? signInCard() : null);
}

function showSignIn() {
  if (isTeacher()) {
    page("Sign in", el("div", { class: "card" }, el("p", {}, SESSION.CanSignIn ? `You are signed in as ${SESSION.User}.`
      : "Sign-in is off on this appliance: this computer is the teacher's."), el("a", { href: "#/", class: "button" }, "Back to the studies")));
    return;
  }
  page("Sign in", SESSION.Role === "anyone" && SESSION.StudentAccess === "code" ? roomCodeCard() : null, signInCard());
}

function showPassword() {
  const f = {
    current: el("input", { id: "pw-current", type: "password", autocomplete: "current-password", required: true }),
    next: el("input", { id: "pw-new", type: "password", autocomplete: "new-password", required: true }),
    again: el("input", { id: "pw-again", type: "password", autocomplete: "new-password", required: true }),
  };
  const out = el("div", { id: "password-message", "aria-live": "assertive" });
  page("Change password", el("div", { class: "card" },
    el("p", { class: "muted" }, "The teacher's password pipacs keeps. Other devices signed in as the teacher will have to sign in again."),
    el("form", { class: "row", onsubmit: async (ev) => {
      ev.preventDefault();
      if (f.next.value !== f.again.value) { out.replaceChildren(message("err", "The two new passwords differ.")); return; }
      try {
        await api("POST", "/pipacs/password", { Current: f.current.value, New: f.next.value });
        for (const i of Object.values(f)) i.value = "";
        await loadSession();
        out.replaceChildren(message("ok", "Password changed."));
      } catch (e) { out.replaceChildren(message("err", e.message)); }
    } }, el("label", {}, "Current password", f.current), el("label", {}, "New password", f.next),
      el("label", {}, "New password again", f.again), el("button", { type: "submit", id: "pw-go" }, "Change password")), out));
}

async function showAudit() {
  const events = await api("GET", "/pipacs/audit");
  page("Recent events", el("div", { class: "card" }, events.length ? el("table", { id: "audit" },
    el("thead", {}, el("tr", {}, ["Time (UTC)", "Address", "User", "Action", "Outcome", "Detail"].map(h => el("th", {}, h)))),
    el("tbody", {}, events.map(e => el("tr", { class: e.Outcome === "done" ? "" : "refused" },
      el("td", {}, (e.Time || "").replace("T", " ").replace("Z", "")), el("td", {}, e.Address), el("td", {}, e.User),
      el("td", {}, e.Action), el("td", {}, e.Outcome), el("td", {}, e.Detail))))) : el("p", {}, "Nothing yet.")));
}

async function showLabels() {
  const [labels, published, collections] = await Promise.all([api("GET", "/tools/labels"), api("GET", "/pipacs/published-labels"),
    caseCollections().catch(() => new Map())]);   // cases.js: the teaching cases' collections
  const shown = new Set(published);
  const studyLabels = new Set([...labels, ...published]);
  const all = [...new Set([...studyLabels, ...collections.keys()])].sort();
  const cases = (l) => collections.get(l) ? [el("a", { href: `#/cases?collection=${encodeURIComponent(l)}` },
    `${collections.get(l)} case${collections.get(l) === 1 ? "" : "s"}`), " ", collectionBundleLink(l)] : [];
  page("Labels", el("div", { class: "card" },
    el("p", { class: "muted" }, "A label published to students shows them every study carrying it, once the study is de-identified. " +
      "A label is also a collection of teaching cases: its bundle holds them all, to import on another board."),
    all.length ? el("table", { id: "label-table" }, el("tbody", {}, all.map(l => el("tr", { "data-label": l },
      el("td", {}, studyLabels.has(l) ? el("a", { href: `#/?label=${encodeURIComponent(l)}` }, l) : l),
      el("td", {}, studyLabels.has(l) ? publishToggle(l, shown, false) : null), el("td", {}, ...cases(l))))))
      : el("p", {}, "No label yet: add one on a study's page.")));
}

// ------------------------------------------------------------------ router

// One page drawn at a time: a navigation while a page is still loading (a tap on a link, the page's
// own move after an action) is drawn once the one under way is done, so a slow page that finishes
// late never draws over the newer one.
let routing = null;
let routeAgain = false;
function route() {
  if (routing) { routeAgain = true; return routing; }
  routing = (async () => {
    try {
      do {
        routeAgain = false;
        const [path] = (location.hash.slice(1) || "/").split("?");
        const [kind, id] = path.split("/").filter(Boolean);
        delete main.dataset.view;
        await render();
        if (!routeAgain) main.dataset.view = `${kind || "studies"}:${id || ""}`;   // which page is on screen, drawn
      } while (routeAgain);
    } finally { routing = null; }
  })();
  return routing;
}

async function render() {
  const [path, params] = (location.hash.slice(1) || "/").split("?");
  const parts = path.split("/").filter(Boolean);
  const [kind, id] = parts;
  if (kind === "sign-in") return showSignIn();
  if (SESSION.Role === "anyone") return showWelcome();
  if (TEACHER_PAGES.has(kind) && !isTeacher()) return teacherOnly();
  if (kind === "password") return showPassword();
  if (kind === "audit") return guarded(showAudit, "page");
  if (kind === "labels") return guarded(showLabels, "page");
  if (!kind) return guarded(() => showStudies(params), "page");
  if (kind === "patients") return guarded(showPatients, "page");
  if (kind === "cases") return guarded(() => showCases(params), "page");   // cases.js
  if (kind === "case") return guarded(() => showCase(id, params), "case");
  if (kind === "patient") return guarded(() => showPatient(id, params), "patient");
  if (kind === "study") return guarded(() => showStudy(id, params), "study");
  if (kind === "series") return guarded(() => showSeries(id, params), "series");
  if (kind === "instance") return guarded(() => showInstance(id), "instance");
  if (kind === "tags") return guarded(() => showTags(id), "instance");
  if (kind === "upload") return showUpload();
  if (kind === "modalities") return guarded(showModalities, "page");
  if (kind === "about") return guarded(showAbout, "page");
  notFound("page");
}

window.addEventListener("hashchange", route);
Promise.all([loadSession(), loadStatus()]).then(route);
