// The gallery's cards: sort by any column, filter by words or column conditions, click to play.
"use strict";
const data = JSON.parse(document.getElementById("gallery-data").textContent);
const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text != null) e.textContent = text; return e; };
const fmt = (v) => (v == null ? "-" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(4)) : String(v));

function value(job, column) {
  if (column === "progress") return job.frames_total ? job.frames_done / job.frames_total : null;
  if (column === "frames") return job.frames_total;
  if (column in job.quality) return job.quality[column];
  return job[column] ?? null;
}

function hint(media, job) {  // where the browser cannot play a running job's live HLS playlist (e.g. from file://)
  const note = el("p", "hint", "this browser cannot play the live HLS playlist here; open it in an HLS player: ");
  const a = el("a", null, job.playlist); a.href = job.playlist; note.append(a);
  media.replaceChildren(note);
}

function play(job, media) {
  const live = job.status === "running" && job.playlist;
  const video = el("video");
  video.controls = true; video.muted = true; video.autoplay = true; video.playsInline = true;
  if (live) {
    if (!video.canPlayType("application/vnd.apple.mpegurl")) return hint(media, job);
    video.addEventListener("error", () => hint(media, job));
    video.src = job.playlist;
  } else if (job.video) video.src = job.video;
  else return media.append(el("p", "hint", "no video to play"));
  media.replaceChildren(video);
  video.play().catch(() => {});
}

function card(job) {
  const c = el("article", "card" + (job.problem ? " bad" : ""));
  c.dataset.id = job.id;
  const media = el("div", "media");
  if (job.sheet) { const img = el("img"); img.src = job.sheet; img.alt = "contact sheet of " + job.id; media.append(img); }
  else media.append(el("div", "empty", "no contact sheet"));
  c.append(media, el("div", "id", job.id), el("div", "prompt", job.prompt));
  const line = el("div");
  line.append(el("span", "status " + job.status, job.status), ` ${fmt(job.frames_done)}/${fmt(job.frames_total)} frames, ${job.seconds == null ? "-" : job.seconds.toFixed(1)} s`);
  const bar = el("div", "bar"), fill = el("div");
  fill.style.width = `${100 * (value(job, "progress") || 0)}%`; bar.append(fill);
  c.append(line, bar);
  if (job.problem) c.append(el("div", "wrong", job.problem));
  const table = el("table");
  for (const q of data.quality) {
    if (job.quality[q] == null) continue;
    const tr = el("tr"); tr.title = data.columns[q];
    tr.append(el("td", null, q), el("td", "v", fmt(job.quality[q]))); table.append(tr);
  }
  c.append(table);
  c.addEventListener("click", () => { if (!media.querySelector("video, .hint")) play(job, media); });
  return c;
}

function matches(job, token) {
  const cond = token.match(/^(\w+)(<=|>=|!=|<|>|=)(.*)$/);
  if (cond && cond[1] in data.columns) {
    const [, column, op, rhs] = cond, v = value(job, column), n = Number(rhs);
    if (v == null) return false;
    const isNum = typeof v === "number" && rhs !== "" && !Number.isNaN(n), a = isNum ? v : String(v).toLowerCase(), b = isNum ? n : rhs;
    return { "<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b, "=": a == b, "!=": a != b }[op];
  }
  return [job.id, job.prompt, job.status, job.problem || ""].join(" ").toLowerCase().includes(token);
}

function show() {
  const column = $("sort").value, sign = $("dir").dataset.desc === "1" ? -1 : 1;
  const tokens = $("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  const jobs = data.jobs.filter((j) => tokens.every((t) => matches(j, t)));
  jobs.sort((x, y) => {
    const a = value(x, column), b = value(y, column);
    if (a == null || b == null) return (a == null) - (b == null);  // missing numbers last either way
    return sign * (a < b ? -1 : a > b ? 1 : 0);
  });
  $("cards").replaceChildren(...jobs.map(card));
  $("count").textContent = `${jobs.length} of ${data.jobs.length} jobs`;
  const params = new URLSearchParams({ sort: column, dir: sign < 0 ? "desc" : "asc", filter: $("filter").value });
  history.replaceState(null, "", "#" + params);
}

for (const [column, description] of Object.entries(data.columns)) {
  const o = el("option", null, column); o.value = column; o.title = description; $("sort").append(o);
}
const initial = new URLSearchParams(location.hash.slice(1));
$("sort").value = initial.get("sort") || data.default_sort;
$("dir").dataset.desc = initial.get("dir") === "desc" ? "1" : "0";
$("dir").textContent = initial.get("dir") === "desc" ? "descending" : "ascending";
$("filter").value = initial.get("filter") || "";
$("generated").textContent = `written ${data.generated}; reload for newer progress. Default order: worst ${data.default_sort} first.`;
$("sort").addEventListener("change", show);
$("filter").addEventListener("input", show);
$("dir").addEventListener("click", () => {
  const desc = $("dir").dataset.desc !== "1";
  $("dir").dataset.desc = desc ? "1" : "0"; $("dir").textContent = desc ? "descending" : "ascending"; show();
});
show();
