/*
 * Usage charts on the app page (no dependencies). Polls the URL in #usage-card's
 * data-usage-url (portal.views.AppUsageView) every interval_s it answers with, and draws for each
 * live instance a sparkline (inline SVG) of its CPU, as a share of its vCPUs, and of its memory,
 * over its last samples, with the newest figure beside each. Rows of instances that left go.
 * Every figure goes into the page as text (textContent), never as HTML. Each row carries
 * data-cpu-percent and data-memory-mib (the newest figures) and data-samples (how many).
 */
(() => {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 140;
  const HEIGHT = 28;
  const MIB = 1024 * 1024;
  const DEFAULT_INTERVAL_S = 3;

  function sparkline(values, max, kind) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", `sparkline ${kind}`);
    svg.setAttribute("width", WIDTH);
    svg.setAttribute("height", HEIGHT);
    svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
    if (values.length > 0) {
      const step = values.length > 1 ? WIDTH / (values.length - 1) : 0;
      const points = values.map((value, i) => {
        const y = HEIGHT - 1 - (Math.min(Math.max(value, 0), max) / max) * (HEIGHT - 2);
        return `${(i * step).toFixed(1)},${y.toFixed(1)}`;
      });
      if (values.length === 1) points.push(`${WIDTH},${points[0].split(",")[1]}`);
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", points.join(" "));
      svg.appendChild(line);
    }
    return svg;
  }

  function cell(row, index) {
    while (row.cells.length <= index) row.insertCell();
    return row.cells[index];
  }

  function render(card, data) {
    const body = card.querySelector("#usage-table tbody");
    const seen = new Set();
    data.instances.forEach((instance) => {
      seen.add(instance.id);
      let row = body.querySelector(`tr[data-usage-for="${CSS.escape(instance.id)}"]`);
      if (!row) {
        row = body.insertRow();
        row.dataset.usageFor = instance.id;
        const code = document.createElement("code");
        code.textContent = instance.id.slice(0, 8);
        cell(row, 0).appendChild(code);
      }
      const samples = instance.samples.filter((s) => Number.isFinite(s.cpu) && Number.isFinite(s.mem));
      const vcpus = Math.max(Number(instance.vcpus) || 1, 1);
      const cpuPercent = samples.map((s) => (100 * s.cpu) / vcpus);
      const memoryMib = samples.map((s) => s.mem / MIB);
      const memoryMax = 1.1 * Math.max(Number(instance.memory_bytes) / MIB || 1, ...memoryMib, 1);
      cell(row, 1).replaceChildren(sparkline(cpuPercent, 100, "cpu"));
      cell(row, 3).replaceChildren(sparkline(memoryMib, memoryMax, "memory"));
      const last = samples.length - 1;
      cell(row, 2).textContent = last >= 0 ? `${cpuPercent[last].toFixed(1)} %` : "—";
      cell(row, 4).textContent = last >= 0 ? `${memoryMib[last].toFixed(1)} MiB` : "—";
      cell(row, 2).className = cell(row, 4).className = "num";
      row.dataset.samples = String(samples.length);
      row.dataset.cpuPercent = last >= 0 ? cpuPercent[last].toFixed(2) : "";
      row.dataset.memoryMib = last >= 0 ? memoryMib[last].toFixed(2) : "";
    });
    body.querySelectorAll("tr[data-usage-for]").forEach((row) => {
      if (!seen.has(row.dataset.usageFor)) row.remove();
    });
  }

  function start(card) {
    let intervalS = DEFAULT_INTERVAL_S;
    async function poll() {
      try {
        const response = await fetch(card.dataset.usageUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (response.ok) {
          const data = await response.json();
          intervalS = Math.min(Math.max(Number(data.interval_s) || DEFAULT_INTERVAL_S, 1), 60);
          render(card, data);
        }
      } catch (error) {
        // The network dropped: the next poll tries again.
      }
      setTimeout(poll, intervalS * 1000);
    }
    poll();
  }

  document.addEventListener("DOMContentLoaded", () => {
    const card = document.querySelector("#usage-card[data-usage-url]");
    if (card) start(card);
  });
})();
