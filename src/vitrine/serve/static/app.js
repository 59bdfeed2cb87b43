// The vitrine search page: plain JavaScript against the API of the server that serves it.
"use strict";

const $ = (id) => document.getElementById(id);
// searches: how many were started; a response whose number is no longer the latest is dropped, so a slow
// earlier search never overwrites a newer one (e.g. the "Exact product" switch flipped while one is in flight).
const state = { photo: null, photoUrl: null, rerankers: ["none"], channels: ["vector"], lastResults: null, limits: {},
                searches: 0 };
const SUGGESTIONS = ["oat milk", "green apple", "yoghurt", "red pepper", "juice", "something sweet"];

function show(view) {
  for (const id of ["home", "results-view", "product-view"]) $(id).hidden = id !== view;
}

function message(text) {
  $("message").textContent = text || "";
  $("message").hidden = !text;
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `the server answered ${response.status}`);
  return body;
}

// --- the photo: picker, drag and drop, paste -------------------------------------------------

function setPhoto(file) {
  if (!file) return;
  if (!/^image\/(jpeg|png|webp)$/.test(file.type)) {
    message(`That file is ${file.type || "not an image"}; use a JPEG, PNG or WebP photo.`);
    return;
  }
  if (state.limits.max_upload_bytes && file.size > state.limits.max_upload_bytes) {
    message(`That photo is ${(file.size / 1e6).toFixed(1)} MB; the limit is ${(state.limits.max_upload_bytes / 1e6).toFixed(0)} MB.`);
    return;
  }
  message("");
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photo = file;
  state.photoUrl = URL.createObjectURL(file);
  $("photo-thumb").src = state.photoUrl;
  $("photo-chip").hidden = false;
  $("q").placeholder = "Add words to narrow it down (optional)";
  search();
}

function clearPhoto() {
  state.photo = null;
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photoUrl = null;
  $("photo-chip").hidden = true;
  $("photo").value = "";
  $("q").placeholder = "Search products, or drop a photo here";
}

$("photo").addEventListener("change", (event) => setPhoto(event.target.files[0]));
$("photo-clear").addEventListener("click", () => { clearPhoto(); if ($("q").value.trim()) search(); });

let dragDepth = 0;
window.addEventListener("dragenter", (event) => {
  if (![...event.dataTransfer.types].includes("Files")) return;
  dragDepth += 1; $("drop").hidden = false;
});
window.addEventListener("dragleave", () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) $("drop").hidden = true; });
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => {
  event.preventDefault(); dragDepth = 0; $("drop").hidden = true;
  const file = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/"));
  if (file) setPhoto(file); else message("Drop an image file (JPEG, PNG or WebP).");
});
window.addEventListener("paste", (event) => {
  const item = [...(event.clipboardData || {}).items || []].find((i) => i.kind === "file" && i.type.startsWith("image/"));
  if (item) { event.preventDefault(); setPhoto(item.getAsFile()); }
});

// --- searching ----------------------------------------------------------------------------

function rerankChoice() {
  const offered = state.rerankers.filter((name) => name !== "none");
  return $("rerank").checked && offered.length ? offered[0] : "none";
}

function channelChoice() {
  return $("exact").checked && state.channels.includes("prototype") ? "prototype" : "vector";
}

async function search() {
  const text = $("q").value.trim();
  if (!text && !state.photo) { location.hash = "#/"; return; }
  const rerank = rerankChoice();
  const channel = channelChoice();
  const filter = $("filter").value.trim();
  const k = 24;
  const ticket = ++state.searches;
  document.body.classList.add("loading");
  message("");
  try {
    let result;
    if (state.photo) {
      const form = new FormData();
      form.append("image", state.photo);
      if (text) form.append("text", text);
      form.append("k", String(k));
      form.append("rerank", rerank);
      form.append("channel", channel);
      if (filter) form.append("filter", filter);
      result = await api("/search", { method: "POST", body: form });
    } else {
      const params = { q: text, k, rerank, channel, ...(filter ? { filter } : {}) };
      result = await api(`/search?${new URLSearchParams(params)}`);
    }
    if (ticket !== state.searches) return;  // a newer search owns the page
    state.lastResults = result;
    const target = state.photo ? `#/search?photo=1&q=${encodeURIComponent(text)}` : `#/search?q=${encodeURIComponent(text)}`;
    if (location.hash !== target) history.pushState(null, "", target);
    renderResults(result);
  } catch (error) {
    if (ticket === state.searches) message(error.message);
  } finally {
    if (ticket === state.searches) document.body.classList.remove("loading");
  }
}

function card(hit, scoreMeaning = "similarity score") {
  const p = hit.product;
  const link = document.createElement("a");
  link.className = "card";
  link.href = `#/p/${encodeURIComponent(p.id)}`;
  const thumb = document.createElement("div");
  thumb.className = "thumb";
  if (p.images.length) {
    const img = document.createElement("img");
    img.src = p.images[0]; img.alt = p.title; img.loading = "lazy";
    thumb.append(img);
  } else {
    thumb.innerHTML = '<span class="noimg">no image</span>';
  }
  const body = document.createElement("div");
  body.className = "body";
  const title = document.createElement("div");
  title.className = "title"; title.textContent = p.title;
  const sub = document.createElement("div");
  sub.className = "sub";
  const attrs = p.attributes || {};
  sub.textContent = [attrs.brand, attrs.category, attrs.coarse_class].filter(Boolean).join(" · ") || p.id;
  const foot = document.createElement("div");
  foot.className = "foot";
  foot.innerHTML = `<span class="rank">#${hit.rank}</span><span class="score">${hit.score.toFixed(3)}</span>`;
  foot.querySelector(".score").title = scoreMeaning;
  body.append(title, sub, foot);
  link.append(thumb, body);
  return link;
}

function renderGrid(grid, hits, emptyText, scoreMeaning) {
  grid.replaceChildren(...hits.map((hit) => card(hit, scoreMeaning)));
  if (!hits.length) grid.innerHTML = `<div class="empty">${emptyText}</div>`;
}

// What a result's score is, for its tooltip: the hybrid reranker's is a calibrated probability.
function scoreMeaning(query) {
  if (query.rerank === "hybrid") return "probability that this is the very product searched for (the reranker's calibrated r)";
  if (query.rerank !== "none") return `reranker score (${query.rerank})`;
  return query.channel === "prototype" ? "similarity to the product's prototype (ID recognition)" : "similarity score";
}

function renderResults(result) {
  show("results-view");
  const q = result.query;
  const what = [q.text ? `“${q.text}”` : null, q.photo ? "your photo" : null].filter(Boolean).join(" + ");
  $("results-title").textContent = `Results for ${what}`;
  const t = result.timings_ms;
  const stages = ["encode", "retrieve", "rerank"].filter((s) => s in t).map((s) => `${s} ${t[s].toFixed(1)}`).join(", ");
  $("results-meta").textContent = `${result.results.length} products · ${t.total.toFixed(0)} ms (${stages} ms)` +
    (q.rerank !== "none" ? ` · reranked (${q.rerank})` : "") + (q.channel === "prototype" ? " · exact product (ID recognition)" : "");
  renderGrid($("grid"), result.results, "Nothing matched. Try other words or another photo.", scoreMeaning(q));
}

// --- the product page ---------------------------------------------------------------------

async function showProduct(id) {
  message("");
  try {
    const p = await api(`/products/${encodeURIComponent(id)}`);
    show("product-view");
    $("product-title").textContent = p.title;
    $("product-id").textContent = `Item ${p.id}${p.group ? ` · group ${p.group}` : ""}`;
    $("product-description").textContent = p.description;
    $("product-image").src = p.images[0] || "";
    $("product-image").alt = p.title;
    $("product-image").hidden = !p.images.length;
    const rows = Object.entries(p.attributes || {}).map(([key, value]) => {
      const tr = document.createElement("tr");
      const k = document.createElement("td"); k.textContent = key.replace(/_/g, " ");
      const v = document.createElement("td"); v.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
      tr.append(k, v);
      return tr;
    });
    $("product-attributes").replaceChildren(...rows);
    $("similar").replaceChildren();
    $("similar-title").hidden = true;
    if (p.images.length) similar(p);
  } catch (error) {
    show("home");
    message(error.message);
  }
}

async function similar(product) {
  // More like this: the product's own image as the query, the product itself left out.
  const blob = await (await fetch(product.images[0])).blob();
  const form = new FormData();
  form.append("image", blob, "product");
  form.append("k", "9");
  try {
    const result = await api("/search", { method: "POST", body: form });
    const hits = result.results.filter((hit) => hit.product.id !== product.id).slice(0, 8);
    $("similar-title").hidden = !hits.length;
    renderGrid($("similar"), hits, "");
  } catch (error) { /* the product page stands without it */ }
}

// --- routing and start-up -----------------------------------------------------------------

function route() {
  const hash = decodeURIComponent(location.hash || "#/");
  if (hash.startsWith("#/p/")) return showProduct(hash.slice(4));
  if (hash.startsWith("#/search")) {
    const params = new URLSearchParams(location.hash.split("?")[1] || "");
    if (params.get("photo") && state.lastResults) return renderResults(state.lastResults);
    const q = params.get("q") || "";
    if (q && !params.get("photo")) { clearPhoto(); $("q").value = q; return search(); }
  }
  show("home");
}

$("search").addEventListener("submit", (event) => { event.preventDefault(); search(); });
$("back").addEventListener("click", (event) => { event.preventDefault(); history.back(); });
// Once a search was asked for (finished or still running), a switch runs it again with the new setting.
$("rerank").addEventListener("change", () => { if (state.searches) search(); });
$("exact").addEventListener("change", () => { if (state.searches) search(); });
window.addEventListener("popstate", route);
window.addEventListener("hashchange", route);

$("suggestions").append(...SUGGESTIONS.map((text) => {
  const button = document.createElement("button");
  button.type = "button"; button.textContent = text;
  button.addEventListener("click", () => { clearPhoto(); $("q").value = text; search(); });
  return button;
}));

(async function start() {
  try {
    const info = await api("/api/info");
    state.rerankers = info.rerankers;
    state.limits = info.limits;
    state.channels = info.channels || ["vector"];
    $("exact-switch").hidden = !state.channels.includes("prototype");  // only towers trained with a prototype head
    const available = info.rerankers.some((name) => name !== "none");
    $("rerank").disabled = !available;
    $("rerank-switch").classList.toggle("disabled", !available);
    $("rerank-switch").title = available ? `Rerank the top results (${info.rerankers.filter((n) => n !== "none").join(", ")})`
                                         : "No reranker in this store";
    $("store-meta").textContent = `${info.products} products · ${info.embedding} embeddings`;
  } catch (error) {
    message(`The server did not answer: ${error.message}`);
  }
  route();
})();
