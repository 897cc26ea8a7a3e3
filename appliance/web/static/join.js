/* The join page (GET /join?code=1234): a student types the four-digit code the projector shows and a
   nickname, POST /sessions/join gives the device its seat (a cookie), then the follower's viewer opens.
   No account, no sign-in. */
"use strict";

(() => {
  const { api, message } = Kit;
  const form = document.getElementById("join-form");
  const code = document.getElementById("join-code");
  const nick = document.getElementById("join-nickname");
  const go = document.getElementById("join-go");
  const out = document.getElementById("join-message");

  const given = new URLSearchParams(location.search).get("code") || "";
  if (/^[0-9]{4}$/.test(given.trim())) code.value = given.trim();
  try { nick.value = localStorage.getItem("pipacs-nickname") || ""; } catch (e) { /* private mode */ }
  (code.value ? nick : code).focus();
  Kit.appName();

  // what each refusal means to a student holding a phone
  function said(e) {
    if (e.status === 404) return "No session is running with that code: check the four digits on the projector.";
    if (e.status === 409) return "That nickname is taken in this session: choose another.";
    if (e.status === 429) {
      const secs = /wait (\d+) s/.exec(e.message || "");    // the board says how long
      return `Too many wrong codes from this device: wait ${secs ? secs[1] + " seconds" : "a minute"}, then try again.`;
    }
    if (e.status === 0) return e.message;
    return e.message || "The appliance refused to join.";
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    out.replaceChildren();
    const c = code.value.replace(/\s+/g, "");
    const n = nick.value.trim();
    if (!/^[0-9]{4}$/.test(c)) {
      code.setAttribute("aria-invalid", "true");
      out.replaceChildren(message("err", "The code has four digits, as the projector shows it."));
      code.focus();
      return;
    }
    code.removeAttribute("aria-invalid");
    if (!n) {
      nick.setAttribute("aria-invalid", "true");
      out.replaceChildren(message("err", "Choose a nickname: the class sees it, your name is not needed."));
      nick.focus();
      return;
    }
    nick.removeAttribute("aria-invalid");
    try { localStorage.setItem("pipacs-nickname", n); } catch (e) { /* private mode */ }   // kept for the next try
    go.disabled = true;
    out.replaceChildren(message("info", "Joining…"));
    try {
      const seat = await api("POST", "/sessions/join", { Code: c, Nickname: n });
      out.replaceChildren(message("ok", `Joined as ${seat.Nickname || n}.`));
      location.assign(`/viewer/live?session=${encodeURIComponent(seat.Session)}`);
    } catch (e) {
      out.replaceChildren(message("err", said(e)));
      (e.status === 409 || e.status === 400 ? nick : code).focus();
      go.disabled = false;
    }
  });
})();
