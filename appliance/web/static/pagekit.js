/* pipacs: what the teaching-session pages (sessions.js, results.js, join.js) share: building elements
   (user text only ever through text nodes), the REST calls with the page's security token, messages.
   Plain JavaScript, nothing loaded from elsewhere (classrooms are often offline). */
"use strict";

const Kit = (() => {
  // Who this page's user is (GET /pipacs/session); with sign-in off every client is the teacher.
  let who = { Role: "teacher", User: "", CSRF: "", CanSignIn: false };

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  // no browser login dialog on a 401 (X-Requested-With), and the sign-in's token on what changes state
  async function api(method, path, body) {
    const init = { method, headers: { "X-Requested-With": "pipacs" } };
    if (who.CSRF && method !== "GET" && method !== "HEAD") init.headers["X-Pipacs-CSRF"] = who.CSRF;
    if (body !== undefined) {
      init.body = typeof body === "string" ? body : JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    let r;
    try { r = await fetch(path, init); } catch (e) {
      throw new ApiError(0, "The appliance did not answer: check the Wi-Fi and try again.");
    }
    const text = await r.text();
    if (!r.ok) {
      let msg = text;
      try { const j = JSON.parse(text); msg = j.Message || j.Details || text; } catch (e) { /* plain text */ }
      throw new ApiError(r.status, msg || r.statusText);
    }
    return text ? JSON.parse(text) : null;
  }

  async function loadWho() {
    try { who = await api("GET", "/pipacs/session"); } catch (e) { /* keep the default */ }
    return who;
  }

  function message(kind, text) {
    return el("div", { class: `msg ${kind}`, role: kind === "err" ? "alert" : "status" }, text);
  }

  // the header's app name from /pipacs/status (a student may read it too)
  async function appName() {
    try {
      const st = await api("GET", "/pipacs/status");
      const a = document.getElementById("app-name");
      if (a) a.textContent = st.Name;
      return st.Name;
    } catch (e) { return ""; }
  }

  return { el, api, ApiError, loadWho, message, appName, who: () => who };
})();
