/* The self-service pages: sign-in with MSAL (authorization code + PKCE, tokens in sessionStorage),
   the policy's rules before and while typing, the API's answer after. No inline script or style. */
"use strict";
(function () {
  const S = window.WritebackStrings;
  const page = document.body.dataset.page;
  const $ = (id) => document.getElementById(id);
  const fill = (text, values) => text.replace(/\{(\w+)\}/g, (_, k) => String(values[k]));
  const FIELDS = {
    index: [], change: ["current", "new", "confirm"], forgot: ["new", "confirm"], unlock: [],
    helpdesk: ["user", "new", "confirm", "must-change", "also-unlock"],
  };
  const SYMBOLS = "~!@#$%^&*_-+=`|\\(){}[]:;\"'<>,.?/";
  let state = { policy: null, names: [], client: null, account: null, scopes: [], fresh: null, claims: null };

  /* Windows' complexity categories (MS-SAMR 3.1.1.7.2): upper, lower, digit, symbol, other letter. */
  function categories(password) {
    const found = new Set();
    for (const ch of password) {
      if (/\p{Lu}/u.test(ch)) found.add("upper");
      else if (/\p{Ll}/u.test(ch)) found.add("lower");
      else if (/[0-9]/.test(ch)) found.add("digit");
      else if (SYMBOLS.includes(ch)) found.add("symbol");
      else if (/\p{L}/u.test(ch)) found.add("other");
    }
    return found.size;
  }

  /* Each rule: its text and whether `password` meets it (null: cannot be known while typing). */
  function rules(policy, password, confirm) {
    const list = [];
    // A JavaScript string's length is in UTF-16 code units, as AD counts: an emoji counts two.
    list.push(["length", fill(S.rules.length, { n: policy.minLength }), password.length >= policy.minLength]);
    if (policy.complexity) {
      list.push(["categories", S.rules.categories, categories(password) >= 3]);
      const lowered = password.toLowerCase();
      const named = state.names.some((n) => n && lowered.includes(n.toLowerCase()));
      list.push(["name", S.rules.name, password.length > 0 && !named]);
    }
    if (policy.historyLength > 0) list.push(["history", fill(S.rules.history, { n: policy.historyLength }), null]);
    if (policy.minAgeSeconds > 0) {
      list.push(["minAge", fill(S.rules.minAge, { hours: Math.ceil(policy.minAgeSeconds / 3600) }), null]);
    }
    if (confirm !== undefined) list.push(["match", S.rules.match, password.length > 0 && password === confirm]);
    return list;
  }

  function showRules(policy, names) {
    state.policy = policy;
    if (names) state.names = names.filter((n) => n.length >= 3);
    const box = $("rules-box");
    const ul = $("rules");
    ul.replaceChildren();
    box.hidden = false;
    if (!policy) {
      const li = document.createElement("li");
      li.textContent = S.rulesUnknown;
      ul.append(li);
      return;
    }
    for (const [key, text, met] of rules(policy, $("new").value, $("confirm").value)) {
      const li = document.createElement("li");
      li.dataset.rule = key;
      li.textContent = text;
      if (met !== null) {
        li.className = $("new").value || key === "match" && $("confirm").value ? (met ? "met" : "unmet") : "";
        li.dataset.met = String(met);
      }
      ul.append(li);
    }
  }

  function render(status, body, operation) {
    const box = $("result");
    box.replaceChildren();
    const say = (text, cls) => { const p = document.createElement("p"); p.textContent = text; if (cls) p.className = cls; box.append(p); };
    if (status === 200 && body && body.status === "applied") {
      box.className = "ok";
      say(S.applied[operation] || S.applied.helpdesk);
      if (operation === "helpdesk" && $("must-change").checked) say(S.mustChangeNext);
      else if (operation !== "unlock") say(S.takesEffect);
      return;
    }
    box.className = "bad";
    if (body && body.state === "pending") { say(S.pending); return; }
    const reason = body && (body.reason || body.error);
    say(`${S.failedPrefix} ${(body && body.message) || S.unexpected}`);
    if (reason && S.guidance[reason]) say(S.guidance[reason]);
    if (reason) say(fill(S.reasonLabel, { reason }), "reason");
  }

  /* The claims an API's claims challenge (WWW-Authenticate, as Entra ID spells it) asks for. */
  function challengedClaims(header) {
    const match = /claims="([^"]+)"/.exec(header || "");
    if (!match) return null;
    try { return atob(match[1]); } catch (e) { return null; }
  }

  async function call(method, path, body) {
    const headers = { "Content-Type": "application/json" };
    const token = await accessToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(`/api/v1/${path}`, { method, headers, body: body && JSON.stringify(body) });
    let answer = null;
    try { answer = await response.json(); } catch (e) { answer = null; }
    return [response.status, answer, response.headers.get("WWW-Authenticate")];
  }

  /* The token of the sign-in that just happened while it lasts (after a step-up it is the one
     that shows the strong verification), else MSAL's, renewed silently. Held in memory only. */
  async function accessToken() {
    if (!state.client || !state.account) return null;
    if (state.fresh && state.fresh.expiresOn && state.fresh.expiresOn.getTime() > Date.now() + 60000) {
      return state.fresh.accessToken;
    }
    const result = await state.client.acquireTokenSilent({ scopes: state.scopes, account: state.account });
    return result.accessToken;
  }

  /* The signed-in user's own account as the API binds it: the on-premises SID where the token
     carries one (the cloud UPN may differ from AD's), else the user name. */
  function ownAccount() {
    if (!state.account) return "";
    const claims = state.account.idTokenClaims || {};
    return claims.onprem_sid || state.account.username;
  }

  function target() {
    return page === "helpdesk" ? $("user").value.trim() : ownAccount();
  }

  async function act(operation, path, body) {
    $("result").className = "";
    $("result").textContent = S.working;
    $("step-up").hidden = true;
    try {
      const [status, answer, challenge] = await call("POST", path, body);
      render(status, answer, operation);
      state.claims = status === 401 ? challengedClaims(challenge) : null;
      $("step-up").hidden = !state.claims;
    } catch (e) {
      render(0, { message: S.network }, operation);
    }
  }

  /* Sign in again for the claims the API asked for (a Conditional Access authentication context). */
  function stepUp() {
    state.client.loginRedirect({ scopes: ["openid", "profile", ...state.scopes], claims: state.claims, state: page });
  }

  async function submit(event) {
    event.preventDefault();
    const fields = FIELDS[page];
    if (fields.includes("confirm") && $("new").value !== $("confirm").value) {
      render(0, { message: S.mismatch }, page);
      $("confirm").focus();
      return;
    }
    const user = target();
    if (page === "change") {
      await act(page, "passwords/change", { user, oldPassword: $("current").value, newPassword: $("new").value });
    } else if (page === "forgot") {
      await act(page, "passwords/reset", { user, newPassword: $("new").value, initiator: "self-service" });
    } else if (page === "unlock") {
      await act(page, "accounts/unlock", { user });
    } else if (page === "helpdesk") {
      await act(page, "passwords/reset", {
        user, newPassword: $("new").value, initiator: "admin",
        forceChangeAtNextLogon: $("must-change").checked, unlock: $("also-unlock").checked,
      });
    }
  }

  async function history() {
    const [status, answer] = await call("GET", `users/${encodeURIComponent(target())}/requests?hours=24`);
    const list = $("history-list");
    list.replaceChildren();
    $("history-box").hidden = false;
    if (status !== 200) { render(status, answer, "helpdesk"); return; }
    for (const entry of answer.requests) {
      const li = document.createElement("li");
      li.textContent = fill(S.historyEntry, { time: entry.receivedAt, operation: entry.operation, status: entry.status, reason: entry.reason || "" });
      list.append(li);
    }
    if (!answer.requests.length) { const li = document.createElement("li"); li.textContent = S.historyEmpty; list.append(li); }
  }

  async function loadPolicy() {
    const user = target();
    if (!user) return;
    try {
      const [status, answer] = await call("GET", `users/${encodeURIComponent(user)}/policy`);
      const named = page === "helpdesk" ? user : state.account.username;
      const fullName = page === "helpdesk" ? "" : state.account.name || "";
      const names = [named.split("@")[0], ...fullName.split(/[,.\-_#\t ]+/)];
      showRules(status === 200 ? answer.policy : null, names);
    } catch (e) {
      showRules(null);
    }
  }

  async function signIn() {
    const response = await fetch("/api/pages/config");
    const config = await response.json();
    state.scopes = config.scopes;
    const client = new window.msal.PublicClientApplication({
      auth: {
        clientId: config.clientId, authority: config.authority,
        knownAuthorities: [new URL(config.authority).host],
        redirectUri: new URL(config.redirectPath, window.location.origin).href,
      },
      cache: { cacheLocation: "sessionStorage" },
    });
    await client.initialize();
    const result = await client.handleRedirectPromise();
    if (page === "index" && result && result.state !== "index" && FIELDS[result.state]) {
      window.location.assign(`/api/pages/${result.state}`);
      return;
    }
    state.client = client;
    state.fresh = result;
    state.account = (result && result.account) || client.getAllAccounts()[0] || null;
    $("sign-in").addEventListener("click", () => client.loginRedirect({ scopes: ["openid", "profile", ...config.scopes], state: page }));
    $("sign-out").addEventListener("click", () => client.logoutRedirect({ account: state.account }));
    if (state.account) {
      $("who").textContent = fill(S.signedInAs, { user: state.account.username });
      $("intro").textContent = S.intros[page];
      $("sign-in").hidden = true;
      $("sign-out").hidden = false;
      $("form").hidden = page === "index";
      if (page !== "helpdesk" && FIELDS[page].includes("new")) await loadPolicy();
    }
  }

  function setUp() {
    document.title = S.titles[page];
    $("title").textContent = S.titles[page];
    $("intro").textContent = state.account ? S.intros[page] : `${S.intros[page]} ${S.signInFirst}`;
    for (const el of document.querySelectorAll("[data-s]")) el.textContent = S[el.dataset.s];
    $("nav").setAttribute("aria-label", S.navigation);
    for (const name of ["change", "forgot", "unlock", "helpdesk"]) {
      const a = document.createElement("a");
      a.href = `/api/pages/${name}`;
      a.textContent = S.titles[name];
      if (name === page) a.setAttribute("aria-current", "page");
      $("nav").append(a);
    }
    for (const el of document.querySelectorAll("[data-field]")) el.hidden = !FIELDS[page].includes(el.dataset.field);
    $("submit").textContent = S.submit[page] || "";
    for (const id of ["unlock", "expire", "history"]) $(id).hidden = page !== "helpdesk";
    $("form").addEventListener("submit", submit);
    $("unlock").addEventListener("click", () => act("unlock", "accounts/unlock", { user: target() }));
    $("expire").addEventListener("click", () => act("helpdesk", "passwords/expire", { user: target() }));
    $("history").addEventListener("click", history);
    $("step-up").addEventListener("click", stepUp);
    $("user").addEventListener("change", () => { if (page === "helpdesk") loadPolicy(); });
    for (const id of ["new", "confirm"]) $(id).addEventListener("input", () => state.policy && showRules(state.policy));
    signIn().catch(() => render(0, { message: S.network }, page));
  }

  window.WritebackPages = { showRules, render, categories };
  setUp();
})();
