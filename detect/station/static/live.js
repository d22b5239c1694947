// The live page: polls /api/summary and the newest frame, listens to /api/events.
"use strict";
const $ = (id) => document.getElementById(id);
const pct = (r) => (r === null || r === undefined) ? "-" : (100 * r).toFixed(1) + " %";

function text(el, value) { if (el.textContent !== String(value)) el.textContent = value; }

function render(s) {
  const c = s.counting || {items: 0, defective: 0, per_class: {}, defect_rate: null};
  const table = $("counts");
  const defects = new Set(Object.keys(c.defect_rate_per_class || {}));
  for (const [name, n] of Object.entries(c.per_class || {})) {
    let row = table.querySelector(`tr[data-class="${CSS.escape(name)}"]`);
    if (!row) {
      row = table.insertRow();
      row.dataset.class = name;
      if (defects.has(name)) row.className = "defect";
      row.insertCell().textContent = name;
      row.insertCell().className = "n";
    }
    text(row.cells[1], n);
  }
  text($("items"), c.items); text($("defective"), c.defective);
  text($("run-rate"), pct(c.defect_rate));
  text($("recent-rate"), pct(s.recent.defect_rate)); text($("window"), s.recent.window);
  text($("fps"), s.fps.toFixed(1));
  text($("latency"), s.latency_ms === null ? "-" : s.latency_ms.toFixed(0));
  const h = $("health"); text(h, s.source.words); h.className = "health " + s.source.state;
  text($("rate"), c.items_per_minute !== undefined ? c.items_per_minute + " items/min" : "");
  text($("updated"), "updated " + new Date().toLocaleTimeString());
  const box = $("defects");
  const shown = s.defects.map((d) => String(d.id)).join(",");
  if (box.dataset.shown !== shown) {
    box.dataset.shown = shown;
    box.replaceChildren(...s.defects.map((d) => {
      const f = document.createElement("figure");
      f.className = "defect-item";
      if (d.crop) { const i = document.createElement("img"); i.src = d.crop; i.alt = d.class; f.append(i); }
      const cap = document.createElement("figcaption");
      cap.textContent = `${d.class} #${d.track_id} (${d.score})`;
      f.append(cap);
      return f;
    }));
  }
}

async function poll() {
  try {
    const r = await fetch("/api/summary", {cache: "no-store"});
    if (r.ok) render(await r.json());
  } catch (e) { const h = $("health"); h.textContent = "The page lost the station (stopped or network down)."; h.className = "health lost"; }
  setTimeout(poll, 1000);
}

function frame() {
  const img = $("frame");
  const next = new Image();
  next.onload = () => { img.src = next.src; setTimeout(frame, 150); };
  next.onerror = () => setTimeout(frame, 1000);
  next.src = "/api/frame.jpg?t=" + Date.now();
}

let received = 0;
const es = new EventSource("/api/events");
es.onmessage = () => { received += 1; text($("events"), received + " received"); };
es.addEventListener("end", () => es.close());
poll(); frame();
