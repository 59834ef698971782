// PriorCLIP search page. Every value from the server is put into the page with textContent or
// as an attribute of an element we create: no innerHTML, so file names cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { hits: [], selected: null, lastText: null, k: 20, bbox: null };

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

async function fetchJSON(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    let detail = body && body.detail !== undefined ? body.detail : response.statusText;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

function describeWhere(hit) {
  if (hit.kind !== "tile") return "image";
  const [c, r, w, h] = hit.window;
  return `tile ${w}×${h} at ${c},${r}`;
}

// Share of the item's pixels the file marks valid (nodata, mask, alpha), e.g. "valid 73 %";
// null for fully valid items and for indexes made before it was measured.
function validLabel(hit) {
  const v = hit.valid_fraction;
  if (v === null || v === undefined || v >= 1) return null;
  return `valid ${Math.round(v * 100)} %`;
}

function describeBands(hit) {
  if (!hit.rgb_bands) return null;
  const names = hit.rgb_band_names || [];
  const parts = hit.rgb_bands.map((b, i) => (names[i] ? `${b} ${names[i]}` : `${b}`));
  return `${parts.join(", ")} (${hit.rgb_bands_from})`;
}

function cardOf(id) {
  return Array.from(document.querySelectorAll(".card")).find((c) => c.dataset.id === String(id)) || null;
}

function renderResults(data, label) {
  state.hits = data.results;
  const grid = $("results");
  grid.replaceChildren();
  for (const hit of data.results) {
    const card = el("button", { type: "button", class: "card", "data-id": hit.id, title: hit.path });
    const img = el("img", { src: `${hit.thumbnail}?size=256`, alt: hit.name, loading: "lazy" });
    const meta = el("div", { class: "meta" });
    meta.append(el("span", { class: "score" }, hit.score.toFixed(3)));
    const valid = validLabel(hit);
    if (valid) meta.append(el("span", { class: "valid", title: "share of valid (not nodata) pixels" }, valid));
    meta.append(el("span", { class: "name" }, hit.name));
    card.append(img, meta);
    if (!ResultMap.isGeoreferenced(hit)) {
      card.append(el("span", { class: "no-geo", title: "no georeference: not on the map" }, "no georeference"));
    }
    card.addEventListener("click", () => showDetail(hit));
    // a card and its footprint light up together, from either side
    for (const [type, on] of [["mouseenter", true], ["mouseleave", false], ["focus", true], ["blur", false]]) {
      card.addEventListener(type, () => ResultMap.highlight(hit.id, on));
    }
    grid.append(card);
  }
  const area = data.query && data.query.bbox ? data.query.bbox : null;
  ResultMap.show(data.results, {
    area,
    onHover: (hit, on) => { const card = cardOf(hit.id); if (card) card.classList.toggle("linked", on); },
    onPick: (hit) => {
      const card = cardOf(hit.id);
      if (!card) return;
      card.scrollIntoView({ block: "nearest" });
      card.focus({ preventScroll: true });
    },
  });
  const where = area ? " in the map area" : "";
  setStatus(data.count ? `${data.count} results for ${label}${where}` : `no results for ${label}${where}`);
}

// The search area (a bbox string) applies to every search until cleared; the chip says so.
function setArea(bbox) {
  state.bbox = bbox;
  $("area").hidden = !bbox;
  $("area-text").textContent = bbox ? `in area ${bbox.split(",").map((v) => Number(v).toFixed(3)).join(", ")}` : "";
}

function withArea(params) {
  if (state.bbox) params.set("bbox", state.bbox);
  return params;
}

async function searchText(text, k) {
  setStatus("searching…");
  const params = withArea(new URLSearchParams({ q: text, k: String(k) }));
  try {
    const data = await fetchJSON(`/api/search?${params}`);
    state.lastText = text;
    const link = $("geojson-link");
    link.href = `/api/search.geojson?${params}`;
    link.classList.remove("disabled");
    link.setAttribute("aria-disabled", "false");
    renderResults(data, `“${text}”`);
  } catch (err) {
    setStatus(`search failed: ${err.message}`, true);
  }
}

async function searchImage(file, k) {
  setStatus(`searching with ${file.name}…`);
  const form = new FormData();
  form.append("file", file);
  try {
    const params = withArea(new URLSearchParams({ k: String(k) }));
    const data = await fetchJSON(`/api/search/image?${params}`, { method: "POST", body: form });
    $("geojson-link").classList.add("disabled");
    renderResults(data, `image ${file.name}`);
  } catch (err) {
    setStatus(`image search failed: ${err.message}`, true);
  }
}

async function searchSimilar(hit, k) {
  setStatus("searching…");
  try {
    const params = withArea(new URLSearchParams({ k: String(k) }));
    const data = await fetchJSON(`/api/items/${hit.id}/similar?${params}`);
    $("geojson-link").classList.add("disabled");
    renderResults(data, `items like ${hit.name}`);
  } catch (err) {
    setStatus(`search failed: ${err.message}`, true);
  }
}

function fmt(n) { return Number(n).toFixed(6); }

function showDetail(hit) {
  state.selected = hit;
  for (const card of document.querySelectorAll(".card")) {
    card.classList.toggle("selected", card.dataset.id === String(hit.id));
  }
  $("detail").hidden = false;
  $("detail-title").textContent = hit.name;
  $("detail-image").src = `${hit.thumbnail}?size=512`;
  $("detail-image").alt = hit.name;
  const rows = [["id", hit.id], ["score", hit.score !== undefined ? hit.score.toFixed(4) : "–"],
    ["path", hit.path], ["kind", describeWhere(hit)]];
  if (hit.valid_fraction !== null && hit.valid_fraction !== undefined) {
    rows.push(["valid pixels", `${Math.round(hit.valid_fraction * 100)} %`]);
  }
  const bands = describeBands(hit);
  if (bands) rows.push(["RGB bands", bands]);
  if (hit.crs) rows.push(["scene CRS", hit.crs]);
  if (hit.bounds) {
    const [w, s, e, n] = hit.bounds;
    rows.push(["lon", `${fmt(w)} … ${fmt(e)}`], ["lat", `${fmt(s)} … ${fmt(n)}`]);
  }
  const table = $("detail-meta");
  table.replaceChildren();
  for (const [key, value] of rows) {
    const tr = el("tr");
    tr.append(el("th", {}, key), el("td", {}, value));
    table.append(tr);
  }
  drawScene(hit);
}

const SVG_NS = "http://www.w3.org/2000/svg";

function drawScene(hit) {
  const block = $("scene-block");
  if (hit.scene_id === null || hit.scene_id === undefined || !hit.scene_size) { block.hidden = true; return; }
  block.hidden = false;
  const [width, height] = hit.scene_size;
  const same = state.hits.filter((h) => h.scene_id === hit.scene_id);
  $("scene-caption").textContent = `${width}×${height} px; ${same.length} of the results lie in this scene`;
  $("scene-image").src = `/api/scenes/${hit.scene_id}/overview`;
  const svg = $("scene-svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const ordered = same.filter((h) => h.id !== hit.id).concat([hit]);  // selected one drawn on top
  for (const h of ordered) {
    const [c, r, w, hh] = h.window;
    const rect = document.createElementNS(SVG_NS, "rect");
    rect.setAttribute("x", c); rect.setAttribute("y", r);
    rect.setAttribute("width", w); rect.setAttribute("height", hh);
    if (h.id === hit.id) rect.setAttribute("class", "current");
    const title = document.createElementNS(SVG_NS, "title");
    title.textContent = `#${h.rank ?? ""} ${h.name} (${h.score !== undefined ? h.score.toFixed(3) : ""})`;
    rect.append(title);
    svg.append(rect);
  }
}

async function loadSummary() {
  try {
    const h = await fetchJSON("/api/health");
    const counts = h.counts || {};
    $("summary").textContent = `${h.items} items` +
      (counts.scenes ? ` (${counts.tiles} tiles from ${counts.scenes} scenes)` : "") +
      ` · model ${h.model} · ${h.index_type} index`;
    $("q").maxLength = h.limits.max_query_chars;
  } catch (err) {
    $("summary").textContent = `index unavailable: ${err.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  loadSummary();
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("q").value.trim();
    if (text) searchText(text, Number($("k").value));
  });
  $("image-file").addEventListener("change", () => {
    const file = $("image-file").files[0];
    if (file) searchImage(file, Number($("k").value));
    $("image-file").value = "";
  });
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
  $("search-view").addEventListener("click", () => {
    const box = ResultMap.viewBox();
    if (!box || !state.lastText) return;
    setArea(box);
    searchText(state.lastText, Number($("k").value));
  });
  $("area-clear").addEventListener("click", () => {
    setArea(null);
    if (state.lastText) searchText(state.lastText, Number($("k").value));
  });
  $("similar-button").addEventListener("click", () => {
    if (state.selected) searchSimilar(state.selected, Number($("k").value));
  });
  const initial = new URLSearchParams(location.search).get("q");
  if (initial) { $("q").value = initial; searchText(initial, Number($("k").value)); }
});
