// The live debugger of a source page: follows the sources API's server-sent events
// (/api/v1/sources/{id}/live, same origin, the session cookie) from the cursor the page was
// rendered at, and puts each event or refused message on top of the list, cloned from the
// page's own <template> rows. Pausing holds new rows back (and counts them) until resumed.
"use strict";

(function () {
  const MAX_ROWS = 200; // rows kept on the page; older ones drop off the bottom
  const MAX_HELD = 500; // rows held while paused; past that, the oldest held go

  function pretty(value) {
    return JSON.stringify(value, null, 2);
  }

  function prettyExcerpt(text) {
    if (!text) return "(nothing could be read from the request)";
    try { return pretty(JSON.parse(text)); } catch (_) { return text; } // cut short: as it came
  }

  function fill(row, field, value) {
    row.querySelectorAll(`[data-field="${field}"]`).forEach((node) => { node.textContent = value ?? ""; });
  }

  function setTime(row, iso) {
    const node = row.querySelector('time[data-field="time"]');
    if (node && iso) node.setAttribute("datetime", iso);
  }

  function debugger_(root) {
    const list = root.querySelector("[data-live-list]");
    const empty = root.querySelector("[data-live-empty]");
    const status = root.querySelector("[data-live-status]");
    const label = root.querySelector("[data-live-label]");
    const toggle = root.querySelector("[data-live-toggle]");
    const template = (id) => document.getElementById(id).content.firstElementChild;
    const templates = {
      event: template("live-event-row"),
      refusal: template("live-refusal-row"),
      gap: template("live-gap-row"),
    };
    let paused = false;
    let connected = false;
    let held = [];

    function show() {
      const state = !connected ? status.dataset.state : paused ? "paused" : "live";
      status.dataset.state = state;
      if (state === "paused") {
        label.textContent = held.length ? `Paused · ${held.length} new` : "Paused";
      } else if (state === "live") {
        label.textContent = "Live";
      }
    }

    function disconnected(state, text) {
      connected = false;
      status.dataset.state = state;
      label.textContent = text;
    }

    function eventRow(data) {
      const row = templates.event.cloneNode(true);
      setTime(row, data.received_at);
      fill(row, "type", data.type);
      fill(row, "name", data.name || "—");
      fill(row, "user", data.user_id || data.anonymous_id || "—");
      row.querySelector('[data-field="anon"]').hidden = Boolean(data.user_id || !data.anonymous_id);
      fill(row, "message_id", data.message_id);
      fill(row, "seq", data.seq);
      fill(row, "pretty", pretty(data.payload));
      return row;
    }

    function refusalRow(data) {
      const row = templates.refusal.cloneNode(true);
      setTime(row, data.received_at);
      fill(row, "status", data.status);
      fill(row, "reason", data.reason);
      fill(row, "message_id_text", data.message_id ? ` (message id ${data.message_id})` : "");
      fill(row, "pretty", prettyExcerpt(data.excerpt));
      return row;
    }

    function put(rows) {
      if (!rows.length) return;
      const fragment = document.createDocumentFragment();
      rows.slice().reverse().forEach((row) => fragment.appendChild(row)); // newest on top
      list.prepend(fragment);
      while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
      empty.hidden = true;
      window.tessera?.enhance(list);
    }

    // The figures above the debugger follow what arrives, until the next page load
    // brings the store's own (which also count retried duplicates).
    const numbers = new Intl.NumberFormat();
    function tally(kind, iso) {
      const count = document.querySelector(`[data-live-count="${kind}"]`);
      if (count) {
        const value = Number(count.textContent.replace(/\D/g, "")) || 0;
        count.textContent = numbers.format(value + 1);
      }
      const hint = document.querySelector(`[data-live-hint="${kind}"]`);
      if (hint) hint.textContent = "the reasons are below";
      const last = document.querySelector(`[data-live-last="${kind}"]`);
      if (last && iso) {
        const time = document.createElement("time");
        time.setAttribute("datetime", iso);
        time.setAttribute("data-local", "");
        time.setAttribute("data-relative", "");
        last.replaceChildren(time);
        window.tessera?.enhance(last);
      }
    }

    function receive(row) {
      if (paused) {
        held.push(row);
        if (held.length > MAX_HELD) held = held.slice(-MAX_HELD);
        show();
      } else {
        put([row]);
      }
    }

    toggle.addEventListener("click", () => {
      paused = !paused;
      toggle.setAttribute("aria-pressed", String(paused));
      toggle.textContent = paused ? "Resume" : "Pause";
      if (!paused) {
        put(held);
        held = [];
      }
      show();
    });

    const url = new URL(root.dataset.stream, window.location.href);
    url.searchParams.set("after", root.dataset.cursor);
    const stream = new EventSource(url);
    stream.addEventListener("open", () => { connected = true; show(); });
    stream.addEventListener("event", (message) => {
      const data = JSON.parse(message.data);
      tally("event", data.received_at);
      receive(eventRow(data));
    });
    stream.addEventListener("refusal", (message) => {
      const data = JSON.parse(message.data);
      tally("refusal", data.received_at);
      receive(refusalRow(data));
    });
    // "5 seconds ago" stays true while the page is open.
    const stats = document.querySelector("[data-live-stats]");
    if (stats) window.setInterval(() => window.tessera?.enhance(stats), 15000);
    stream.addEventListener("gap", () => receive(templates.gap.cloneNode(true)));
    stream.addEventListener("error", () => {
      // The server ends a stream every few minutes and the browser reconnects from the
      // last cursor; CLOSED means it gave up (signed out, or the source is gone).
      if (stream.readyState === EventSource.CLOSED) {
        disconnected("closed", "Disconnected: reload the page to follow again");
      } else {
        disconnected("connecting", "Reconnecting…");
      }
    });
    window.addEventListener("pagehide", () => stream.close());
  }

  document.addEventListener("DOMContentLoaded", () => {
    // A page that showed a write key answered a form post: point the address at the
    // source itself, so that reloading shows the source (the key is never shown twice)
    // rather than posting the form again.
    const canonical = document.querySelector("[data-canonical]")?.dataset.canonical;
    if (canonical && window.location.pathname !== canonical) {
      window.history.replaceState(null, "", canonical);
    }
    document.querySelectorAll("[data-live]").forEach(debugger_);
  });
})();
