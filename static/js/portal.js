// Small progressive enhancements; every page works without JavaScript.
document.addEventListener("change", (event) => {
  const el = event.target;
  if (el.matches("select[data-autosubmit]")) el.form.submit();
});

// A select whose options carry data-hint (the Deploy form's registry) shows the chosen one's
// hint in the element named by data-hint-target (the Image field's help).
document.addEventListener("change", (event) => {
  const el = event.target;
  if (!el.matches("select[data-hint-target]")) return;
  const hint = document.getElementById(el.dataset.hintTarget);
  const chosen = el.selectedOptions[0];
  if (hint && chosen && chosen.dataset.hint) hint.textContent = chosen.dataset.hint;
});

// The app page's Instances field follows the app's target (scaled elsewhere: the API, another
// tab) until the user types in it; the summary fragment is where the target comes from.
document.addEventListener("input", (event) => {
  if (event.target.matches("#actions-form input[name=instances]")) event.target.dataset.edited = "1";
});
document.addEventListener("portal:refreshed", () => {
  const field = document.querySelector("#actions-form input[name=instances]");
  const target = document.querySelector('[data-fragment="summary"] [data-count="target"]');
  if (field && target && !field.dataset.edited && document.activeElement !== field) {
    field.value = target.textContent.trim();
  }
});

document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// Live pages (see LIVE-CONTRACT): an event on the page's WebSocket stream is only a trigger.
// The page re-fetches its server-rendered fragment (debounced) and swaps in each
// [data-fragment] whose server HTML changed, so what is shown always comes from PostgreSQL.
// A console fragment is swapped only when it names another instance, so its stream survives.
(() => {
  const DEBOUNCE_MS = 150;
  const serverHtml = new Map();
  let timer = null;
  let inFlight = false;
  let again = false;

  function rememberFragments(root) {
    root.querySelectorAll("[data-fragment]").forEach((el) => serverHtml.set(el.dataset.fragment, el.outerHTML));
  }

  async function refresh(root) {
    if (inFlight) { again = true; return; }
    inFlight = true;
    try {
      const url = new URL(root.dataset.liveUrl, window.location.href);
      url.searchParams.set("fragment", "1");
      const response = await fetch(url, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" });
      if (response.status === 404) {  // e.g. the app was deleted meanwhile
        window.location.assign(root.dataset.goneUrl || window.location.href);
        return;
      }
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      doc.querySelectorAll("[data-fragment]").forEach((fresh) => {
        const name = fresh.dataset.fragment;
        const current = root.querySelector(`[data-fragment="${name}"]`);
        if (!current || serverHtml.get(name) === fresh.outerHTML) return;
        serverHtml.set(name, fresh.outerHTML);
        current.replaceWith(document.importNode(fresh, true));
      });
      // Closes the consoles swapped out, attaches the ones swapped in.
      if (window.HyperLive) window.HyperLive.attachConsoles(document);
      tickElapsed();
      document.dispatchEvent(new CustomEvent("portal:refreshed"));
    } finally {
      inFlight = false;
      if (again) { again = false; schedule(root); }
    }
  }

  function schedule(root) {
    clearTimeout(timer);
    timer = setTimeout(() => refresh(root), DEBOUNCE_MS);
  }

  function formatSeconds(s) {
    return s < 60 ? `${s.toFixed(0)} s` : `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  }

  // A phase still going shows how long it has been going.
  function tickElapsed() {
    const now = Date.now();
    document.querySelectorAll("[data-until]").forEach((el) => {
      const until = Date.parse(el.dataset.until);
      if (!Number.isNaN(until)) el.textContent = formatSeconds(Math.max(0, (until - now) / 1000));
    });
    document.querySelectorAll("[data-since]").forEach((el) => {
      const since = Date.parse(el.dataset.since);
      if (Number.isNaN(since)) return;
      const elapsed = formatSeconds(Math.max(0, (now - since) / 1000));
      el.textContent = "uptime" in el.dataset ? elapsed : `${elapsed}…`;
    });
  }

  function start() {
    tickElapsed();
    setInterval(tickElapsed, 1000);
    const root = document.querySelector("[data-live-root]");
    if (!root) return;
    rememberFragments(root);
    const body = document.body.dataset;
    const streamUrl = body.wsApp || body.wsTenant;
    if (streamUrl && window.HyperLive) {
      window.HyperLive.events(streamUrl, { after: Number(body.lastEventId || 0), onEvent: () => schedule(root) });
    }
    const pollS = Number(root.dataset.livePollS || 0);  // pages without an event stream (hosts)
    if (pollS > 0) setInterval(() => schedule(root), pollS * 1000);
  }

  // The JSON textarea: put the caret where the JSON parser stopped.
  function placeJsonCaret() {
    const field = document.querySelector("[data-error-line]");
    const area = field && field.querySelector("textarea");
    if (!area) return;
    const lines = area.value.split("\n");
    const line = Number(field.dataset.errorLine), column = Number(field.dataset.errorColumn);
    let offset = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) offset += lines[i].length + 1;
    offset += Math.max(0, column - 1);
    area.focus();
    area.setSelectionRange(offset, offset + 1);
  }

  document.addEventListener("DOMContentLoaded", () => { start(); placeJsonCaret(); });
})();
