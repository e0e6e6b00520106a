// aios-memory ui: browse and search a store. Every piece of memory content reaches the page through
// textContent or an attribute set by the DOM API, never as markup.
"use strict";

const PAGE = 24;
const state = { modality: "text", namespace: "", offset: 0, stats: null, search: 0, page: 0 };
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = { error: `HTTP ${response.status}` };
  }
  if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status}`);
  return body;
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

function fileName(source) {
  if (!source) return "";
  const parts = String(source).split("/");
  try {
    return decodeURIComponent(parts[parts.length - 1]);
  } catch (err) {
    return parts[parts.length - 1];
  }
}

// A creation time as the server's HTML writes it (render.py's `when`), so that the page the script draws
// is the page the server sent; the browser's local time is the tooltip.
function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (isNaN(date)) return iso;
  if (!/(Z|[+-]\d\d:?\d\d)$/.test(iso)) return iso.slice(0, 19).replace("T", " ");
  return `${date.toISOString().slice(0, 19).replace("T", " ")} UTC`;
}

function seconds(value) {
  return `${Number(value).toFixed(1)} s`;
}

// One memory as a card; `rank` and a score when it is a search result.
function card(memory, rank) {
  const node = el("article", `card ${memory.modality}`);
  node.dataset.id = memory.id;
  if (typeof memory.score === "number") {
    node.classList.add("hit");
    const score = el("div", "score");
    score.append(el("span", "rank", `#${rank}`), el("span", "value", memory.score.toFixed(4)));
    const bar = el("div", "bar");
    const fill = el("div");
    fill.style.width = `${Math.max(0, Math.min(1, memory.score)) * 100}%`;
    bar.append(fill);
    score.append(bar);
    node.append(score);
  }
  const id = encodeURIComponent(memory.id);
  if (memory.modality === "image") {
    const img = el("img", "thumb");
    img.src = `/api/thumb/${id}`;
    img.alt = fileName(memory.source) || "image memory";
    node.append(img);
  } else if (memory.modality === "audio") {
    node.append(el("p", "body transcript", memory.transcript || "(no words heard)"));
    const audio = el("audio");
    audio.controls = true;
    audio.preload = "metadata";
    const windowed = memory.start_s !== undefined && memory.end_s !== undefined; // long audio: one row a window
    audio.src = `/api/media/${id}` + (windowed ? `#t=${memory.start_s},${memory.end_s}` : "");
    node.append(audio);
  } else if (memory.modality === "video") {
    // a segment: its representative frame as the poster; the player starts at the segment's moment
    node.append(el("p", "body transcript", memory.transcript || "(no words heard)"));
    const video = el("video");
    video.controls = true;
    video.preload = "none";
    video.poster = `/api/thumb/${id}`;
    video.src = `/api/media/${id}#t=${memory.start_s ?? 0},${memory.end_s ?? ""}`;
    node.append(video);
  } else {
    node.append(el("p", "body", memory.content));
  }
  const meta = el("div", "meta");
  meta.append(el("span", `kind ${memory.modality}`, memory.modality), el("span", "chip", memory.namespace));
  if ((memory.modality === "audio" || memory.modality === "video") && memory.end_s !== undefined) {
    meta.append(el("span", "", `${seconds(memory.start_s)}–${seconds(memory.end_s)}`));
  }
  const stamp = el("span", "", when(memory.created_at));
  if (memory.created_at && !isNaN(new Date(memory.created_at))) stamp.title = new Date(memory.created_at).toLocaleString();
  meta.append(stamp);
  node.append(meta);
  const name = fileName(memory.source);
  if (name) {
    const source = el("div", "meta source", name);
    source.title = memory.source;
    node.append(source);
  }
  return node;
}

function fillNamespaces(select, namespaces) {
  const keep = select.value;
  while (select.options.length > 1) select.remove(1);
  for (const [name, count] of Object.entries(namespaces)) {
    const option = el("option", "", `${name} (${count})`);
    option.value = name;
    select.append(option);
  }
  select.value = keep in namespaces ? keep : "";
}

async function loadStats() {
  const stats = await api("/api/stats");
  state.stats = stats;
  const caller = stats.caller || {};
  const where = caller.namespaces ? caller.namespaces.join(", ") : "all namespaces";
  const rights = caller.write === false ? "read-only" : "read and write";
  $("store-path").textContent = `${caller.name} · ${where} · ${rights}` + (stats.version === undefined ? "" : ` · version ${stats.version}`);
  const counts = $("counts");
  counts.replaceChildren();
  for (const modality of ["text", "image", "audio", "video"]) {
    const table = stats.tables[modality];
    const n = table ? table.memories : 0;
    counts.append(el("span", "chip", `${n} ${modality}`));
    const tab = document.querySelector(`.tab[data-modality="${modality}"] .n`);
    tab.textContent = String(n);
  }
  fillNamespaces($("search-namespace"), stats.namespaces);
  fillNamespaces($("browse-namespace"), stats.namespaces);
  if (!stats.tables[state.modality]) {
    const first = ["text", "image", "audio", "video"].find((m) => stats.tables[m]);
    if (first) state.modality = first;
  }
}

async function loadPage() {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.setAttribute("aria-selected", String(tab.dataset.modality === state.modality));
  }
  const params = new URLSearchParams({ modality: state.modality, limit: PAGE, offset: state.offset });
  if (state.namespace) params.set("namespace", state.namespace);
  const grid = $("grid");
  const request = ++state.page;
  try {
    const page = await api(`/api/memories?${params}`);
    if (request !== state.page) return; // another tab, namespace or page was asked for since
    grid.replaceChildren(...page.memories.map((m) => card(m)));
    if (!page.memories.length) grid.append(el("div", "empty", `No ${state.modality} memories here yet.`));
    const last = Math.min(page.offset + page.memories.length, page.total);
    $("page-info").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "";
    $("prev").disabled = page.offset === 0;
    $("next").disabled = last >= page.total;
  } catch (err) {
    if (request === state.page) grid.replaceChildren(el("div", "empty", err.message));
  }
}

const TITLES = { text: "Text", image: "Images", audio: "Audio", video: "Video" };

// A new search, or an empty query: the results shown so far no longer answer anything. Returns the
// search's number; an answer that arrives after a later search (or a clear) has started is dropped.
function clearResults() {
  $("results").replaceChildren();
  state.search += 1;
  return state.search;
}

function showResults(result, what) {
  const box = $("results");
  box.replaceChildren();
  const groups = {};
  for (const memory of result.results) (groups[memory.modality] = groups[memory.modality] || []).push(memory);
  let total = 0;
  const matched = result.results.length;
  if (!matched) box.append(el("div", "empty no-match", `No memories match ${what}.`));
  for (const modality of matched ? result.searched : []) {
    const found = groups[modality] || [];
    total += found.length;
    const group = el("div", "group");
    group.dataset.modality = modality;
    group.append(el("h3", "", `${TITLES[modality]} · ${found.length} result${found.length === 1 ? "" : "s"}`));
    const grid = el("div", "grid");
    found.forEach((memory, i) => grid.append(card(memory, i + 1)));
    if (!found.length) grid.append(el("div", "empty", "Nothing matched."));
    group.append(grid);
    box.append(group);
  }
  for (const [modality, reason] of Object.entries(result.skipped || {})) {
    box.append(el("p", "note", `${TITLES[modality]} not searched: ${reason}`));
  }
  if (!matched) setStatus(`0 results for ${what}.`);
  else {
    const fused = result.results.some((m) => m.signals);
    const scores = fused ? "scores are fused across tables and signals" : "scores are cosine similarities";
    setStatus(`${total} result${total === 1 ? "" : "s"} for ${what}, best first; ${scores}.`);
  }
}

function searchOptions() {
  return {
    modality: $("search-modality").value,
    namespace: $("search-namespace").value,
    k: Number($("k").value) || 5,
  };
}

async function searchText(event) {
  if (event) event.preventDefault();
  const query = $("q").value;
  const search = clearResults();
  if (!query.trim()) {
    setStatus("Type something to search for; the newest memories are listed below.");
    return;
  }
  const options = searchOptions();
  setStatus("Searching…");
  try {
    const body = JSON.stringify({ query, modality: options.modality || null, namespace: options.namespace || null, k: options.k });
    const result = await api("/api/search", { method: "POST", headers: { "Content-Type": "application/json" }, body });
    if (search === state.search) showResults(result, `“${query}”`);
  } catch (err) {
    if (search !== state.search) return;
    $("results").replaceChildren();
    setStatus(err.message, true);
  }
}

async function searchImage(file) {
  if (!file) return;
  const preview = $("drop-preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  const options = searchOptions();
  const params = new URLSearchParams({ k: options.k, modality: options.modality });
  if (options.namespace) params.set("namespace", options.namespace);
  const search = clearResults();
  setStatus(`Searching by ${file.name || "the image"}…`);
  try {
    const result = await api(`/api/search/image?${params}`, {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    if (search === state.search) showResults(result, `the image ${file.name || ""}`.trim());
  } catch (err) {
    if (search !== state.search) return;
    $("results").replaceChildren();
    setStatus(err.message, true);
  }
}

function wire() {
  $("search-form").addEventListener("submit", searchText);
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) searchImage(files[0]);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file").click();
  });
  $("file").addEventListener("change", (event) => searchImage(event.target.files[0]));
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      state.modality = tab.dataset.modality;
      state.offset = 0;
      loadPage();
    });
  }
  $("browse-namespace").addEventListener("change", (event) => {
    state.namespace = event.target.value;
    state.offset = 0;
    loadPage();
  });
  $("prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE);
    loadPage();
  });
  $("next").addEventListener("click", () => {
    state.offset += PAGE;
    loadPage();
  });
}

async function start() {
  wire();
  try {
    await loadStats();
  } catch (err) {
    setStatus(`Cannot read the store: ${err.message}`, true);
  }
  await loadPage();
  document.body.dataset.ready = "true";
}

start();
