// Tessera's page behaviour, shared by every page. Markup asks for behaviour with data-
// attributes; nothing is inline (the CSP allows scripts from this origin only).
"use strict";

(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  // htmx requests carry the session's CSRF token, as forms do in a hidden field.
  document.addEventListener("htmx:configRequest", (event) => {
    event.detail.headers["X-CSRF-Token"] = csrf();
  });

  // Times arrive as ISO 8601 in UTC; show them in the person's own time zone, keep the
  // exact time on hover.
  const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  const preciseFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  const clockFormat = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
  const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const sameDay = (a, b) => a.toDateString() === b.toDateString();
  function localTimes(root) {
    root.querySelectorAll("time[data-local]").forEach((node) => {
      const moment = new Date(node.getAttribute("datetime"));
      if (Number.isNaN(moment.getTime())) return;
      const seconds = Math.round((moment.getTime() - Date.now()) / 1000);
      if (node.hasAttribute("data-relative") && Math.abs(seconds) < 86400) {
        const [value, unit] = Math.abs(seconds) < 60 ? [seconds, "second"]
          : Math.abs(seconds) < 3600 ? [Math.round(seconds / 60), "minute"]
          : [Math.round(seconds / 3600), "hour"];
        node.textContent = relative.format(value, unit);
      } else if (node.hasAttribute("data-precise")) {
        node.textContent = (sameDay(moment, new Date()) ? clockFormat : preciseFormat).format(moment);
      } else {
        node.textContent = timeFormat.format(moment);
      }
      node.title = node.getAttribute("datetime");
    });
  }

  // Charts: <canvas data-chart='{"type", "labels", "datasets", options}'> (ui.chart).
  // Time labels arrive as ISO moments in UTC and are shown in the reader's zone: hours
  // within a day, the day and hour beyond.
  const numberFormat = new Intl.NumberFormat();
  function timeLabels(labels) {
    const moments = labels.map((text) => new Date(text));
    const span = moments.length > 1 ? moments[moments.length - 1] - moments[0] : 0;
    const format = new Intl.DateTimeFormat(undefined, span > 86400000
      ? { weekday: "short", hour: "2-digit", minute: "2-digit" }
      : { hour: "2-digit", minute: "2-digit" });
    return moments.map((moment) => (Number.isNaN(moment.getTime()) ? "" : format.format(moment)));
  }
  const palette = ["#5443e8", "#16a37f", "#e8833a", "#d6336c", "#1c7ed6", "#8a5a00", "#7048e8", "#2b8a3e"];
  function charts(root) {
    if (!window.Chart) return;
    root.querySelectorAll("canvas[data-chart]").forEach((canvas) => {
      if (canvas.dataset.drawn) return;
      canvas.dataset.drawn = "1";
      const spec = JSON.parse(canvas.dataset.chart);
      const labels = spec.timeLabels ? timeLabels(spec.labels) : spec.labels;
      const datasets = spec.datasets.map((set, index) => {
        const colour = set.color || palette[index % palette.length];
        return {
          borderColor: colour,
          backgroundColor: spec.type === "line" ? colour + "22" : colour,
          borderWidth: 2,
          pointRadius: 0,
          tension: 0.25,
          fill: spec.type === "line" && spec.datasets.length === 1,
          ...set,
        };
      });
      const unit = spec.unit ? " " + spec.unit : "";
      const spark = Boolean(spec.sparkline);
      new window.Chart(canvas, {
        type: spec.type,
        data: { labels, datasets },
        options: {
          responsive: true,
          maintainAspectRatio: false,
          animation: false,
          interaction: { mode: "index", intersect: false },
          plugins: {
            legend: { display: datasets.length > 1 && !spark, position: "bottom", labels: { boxWidth: 10 } },
            tooltip: { callbacks: { label: (item) => `${item.dataset.label}: ${numberFormat.format(item.parsed.y)}${unit}` } },
          },
          scales: spec.type === "doughnut" ? {} : {
            x: { display: !spark, stacked: Boolean(spec.stacked), grid: { display: false }, ticks: { maxTicksLimit: 8, color: "#5f6680", maxRotation: 0 } },
            y: {
              display: !spark, stacked: Boolean(spec.stacked), beginAtZero: true, grid: { color: "#eceef5" },
              ticks: { maxTicksLimit: 5, color: "#5f6680", precision: 0, callback: (value) => numberFormat.format(value) + unit },
            },
          },
        },
      });
    });
  }

  function sparklines(root) {
    if (!window.Chart) return;
    root.querySelectorAll("canvas[data-sparkline]").forEach((canvas) => {
      if (canvas.dataset.drawn) return;
      canvas.dataset.drawn = "1";
      const values = JSON.parse(canvas.dataset.sparkline);
      new window.Chart(canvas, {
        type: "line",
        data: { labels: values.map((_, i) => i), datasets: [{ data: values, borderColor: palette[0], borderWidth: 1.5, pointRadius: 0, tension: 0.3 }] },
        options: { responsive: false, animation: false, events: [], plugins: { legend: { display: false }, tooltip: { enabled: false } },
                   scales: { x: { display: false }, y: { display: false } } },
      });
    });
  }

  function enhance(root) {
    localTimes(root);
    charts(root);
    sparklines(root);
  }
  // For page scripts that add markup themselves (static/sources.js).
  window.tessera = { enhance };

  // Tabs (WAI-ARIA): a [role=tablist] of [role=tab] buttons, each aria-controls its
  // [role=tabpanel]. Click or arrow keys (Home, End too) select; the others' panels hide.
  function selectTab(tab) {
    const list = tab.closest('[role="tablist"]');
    list.querySelectorAll('[role="tab"]').forEach((other) => {
      const chosen = other === tab;
      other.setAttribute("aria-selected", String(chosen));
      other.tabIndex = chosen ? 0 : -1;
      const panel = document.getElementById(other.getAttribute("aria-controls"));
      if (panel) panel.hidden = !chosen;
    });
  }
  document.addEventListener("keydown", (event) => {
    const tab = event.target.closest?.('[role="tab"]');
    if (!tab) return;
    const tabs = [...tab.closest('[role="tablist"]').querySelectorAll('[role="tab"]')];
    const index = tabs.indexOf(tab);
    const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    const target = tabs[(next + tabs.length) % tabs.length];
    selectTab(target);
    target.focus();
  });

  document.addEventListener("click", (event) => {
    const tab = event.target.closest('[role="tab"]');
    if (tab && tab.closest('[role="tablist"]')) selectTab(tab);
    const target = event.target.closest("[data-dialog-open],[data-dialog-close],[data-copy],[data-nav-toggle]");
    if (!target) return;
    if (target.dataset.dialogOpen) document.getElementById(target.dataset.dialogOpen)?.showModal();
    if (target.dataset.dialogClose) document.getElementById(target.dataset.dialogClose)?.close();
    if (target.dataset.copy) {
      const text = document.getElementById(target.dataset.copy)?.innerText || "";
      navigator.clipboard?.writeText(text).then(() => {
        const label = target.querySelector("span");
        if (label) { label.textContent = "Copied"; setTimeout(() => { label.textContent = "Copy"; }, 1500); }
      });
    }
    if (target.hasAttribute("data-nav-toggle")) {
      const open = document.getElementById("sidebar").classList.toggle("open");
      target.setAttribute("aria-expanded", String(open));
    }
  });

  // A form marked data-autosubmit submits when one of its fields changes (list filters).
  // A box marked data-check-all="name" ticks or unticks every box named `name`.
  document.addEventListener("change", (event) => {
    const all = event.target.closest("input[data-check-all]");
    if (all) {
      document.querySelectorAll(`input[type=checkbox][name="${all.dataset.checkAll}"]`)
        .forEach((box) => { box.checked = all.checked; });
      return;
    }
    const form = event.target.closest("form[data-autosubmit]");
    if (form) form.requestSubmit();
  });

  document.addEventListener("DOMContentLoaded", () => enhance(document));
  document.addEventListener("htmx:afterSettle", (event) => enhance(event.target));
})();
