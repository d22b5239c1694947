// The review page: one finding at a time from /api/current, decisions POSTed to /api/decide.
"use strict";
const $ = (id) => document.getElementById(id);
let shown = null;

function place(el, box, f) {
  if (!box) { el.hidden = true; return; }
  el.hidden = false;
  el.style.left = (100 * box[0] / f.width) + "%"; el.style.top = (100 * box[1] / f.height) + "%";
  el.style.width = (100 * (box[2] - box[0]) / f.width) + "%"; el.style.height = (100 * (box[3] - box[1]) / f.height) + "%";
}

async function load(notice) {
  const r = await fetch("/api/current", {cache: "no-store"});
  const s = await r.json();
  $("progress").textContent = `${s.decided} of ${s.total} decided (${s.accepted} accepted, ${s.rejected} rejected), ${s.remaining} to go`;
  $("notice").textContent = notice || s.notice || "";
  shown = s.finding;
  document.querySelectorAll("button").forEach((b) => { b.disabled = !shown; });
  if (!shown) {
    $("title").textContent = "All findings judged";
    $("message").textContent = "Nothing left to review. You can close this page.";
    $("image").hidden = true; place($("ann"), null); place($("model"), null);
    return;
  }
  $("title").textContent = `${shown.code} ${shown.kind.replace("_", " ")} in ${shown.xml}`;
  $("message").textContent = shown.message;
  const img = $("image");
  img.hidden = false;
  img.src = shown.image + "?t=" + shown.token.slice(0, 8);
  place($("ann"), shown.box, shown); place($("model"), shown.model_box, shown);
}

async function decide(decision) {
  if (!shown) return;
  const r = await fetch("/api/decide", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({id: shown.id, decision: decision, token: shown.token})});
  const s = await r.json();
  await load(r.ok ? "" : s.message);
  $("notice").dataset.last = s.message;
}

$("accept").onclick = () => decide("accept");
$("reject").onclick = () => decide("reject");
$("skip").onclick = () => decide("skip");
document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const d = {a: "accept", r: "reject", s: "skip"}[e.key.toLowerCase()];
  if (d) { e.preventDefault(); decide(d); }
});
load();
