// Result map: the footprint of every georeferenced hit over the overview of its scene, drawn with
// the Leaflet copy in vendor/leaflet. There is no tile layer, so the map requests nothing beyond
// this origin (the page's Content-Security-Policy would refuse it anyway). app.js calls `show`
// after each search and `highlight` from the cards; the map calls back so a hovered footprint
// lights its card and a clicked one brings the card into view.
"use strict";

const ResultMap = (() => {
  let map = null;
  let scenes = null;       // scene overviews, in their own pane below the footprints
  let footprints = null;   // one polygon per georeferenced hit
  let areaLayer = null;    // the box the last search was restricted to, dashed
  const polygons = new Map();     // hit id -> polygon
  const sceneRecords = new Map(); // scene id -> promise of /api/scenes/{id}, kept across searches
  let generation = 0;      // scene records arriving after a newer search are dropped

  const node = (id) => document.getElementById(id);

  // A ring of at least three corners plus the closing one; everything else stays off the map.
  function isGeoreferenced(hit) {
    return Array.isArray(hit.footprint) && hit.footprint.length >= 4;
  }

  // GeoJSON order is [lon, lat], Leaflet's is [lat, lon].
  const latLngs = (ring) => ring.map(([lon, lat]) => [lat, lon]);
  const boxBounds = ([west, south, east, north]) => L.latLngBounds([south, west], [north, east]);

  function ensureMap() {
    if (map) return;
    map = L.map("map", { attributionControl: false, zoomSnap: 0.25, minZoom: 1, maxZoom: 22 });
    map.createPane("scenes");  // stacked under the overlay pane by style.css
    scenes = L.layerGroup().addTo(map);
    footprints = L.featureGroup().addTo(map);
    areaLayer = L.layerGroup().addTo(map);
  }

  // The visible part of the map as the API's bbox (minlon,minlat,maxlon,maxlat), clamped to the
  // globe; null before the map has a view.
  function viewBox() {
    if (!map || node("map").hidden) return null;
    const b = map.getBounds();
    const clamp = (v, lim) => Math.max(-lim, Math.min(lim, v)).toFixed(6);
    return [clamp(b.getWest(), 180), clamp(b.getSouth(), 90), clamp(b.getEast(), 180), clamp(b.getNorth(), 90)].join(",");
  }

  function sceneRecord(id) {
    if (!sceneRecords.has(id)) {
      sceneRecords.set(id, fetch(`/api/scenes/${id}`).then((r) => (r.ok ? r.json() : null)).catch(() => null));
    }
    return sceneRecords.get(id);
  }

  async function addScene(id, gen) {
    const scene = await sceneRecord(id);
    if (gen !== generation || !scene || !scene.bounds) return;
    // The overview is stretched over the scene's lon/lat box: exact for north-up lon/lat
    // scenes, a close fit for a projected scene of a few kilometres.
    L.imageOverlay(scene.overview, boxBounds(scene.bounds), {
      pane: "scenes", className: "scene-overview", alt: `overview of ${scene.name}`, interactive: false,
    }).addTo(scenes);
  }

  function tooltip(hit) {
    // An element, not a string: Leaflet puts string content in with innerHTML.
    const span = document.createElement("span");
    const score = typeof hit.score === "number" ? ` (${hit.score.toFixed(3)})` : "";
    span.textContent = `#${hit.rank ?? ""} ${hit.name}${score}`;
    return span;
  }

  function highlight(id, on) {
    const polygon = polygons.get(String(id));
    if (!polygon || !polygon.getElement()) return;
    polygon.getElement().classList.toggle("highlight", on);
    if (on) polygon.bringToFront();
  }

  function describe(total, placed, sceneCount) {
    const off = total - placed;
    if (!placed) return `none of the ${total} results has a georeference: nothing to map`;
    const where = `${placed} footprint${placed === 1 ? "" : "s"} over ${sceneCount} scene${sceneCount === 1 ? "" : "s"}`;
    return off ? `${where}; ${off} result${off === 1 ? "" : "s"} without georeference not on the map` : where;
  }

  // Draw `hits` (the whole result list, in rank order). onHover(hit, on) and onPick(hit) are the
  // card side of the link.
  // `area` ([w, s, e, n] or null) is the box the search was restricted to: drawn dashed, and the
  // map stays up to show it even when nothing was found inside.
  function show(hits, { onHover, onPick, area = null }) {
    generation += 1;
    const panel = node("map-panel");
    const placed = hits.filter(isGeoreferenced);
    const sceneIds = [...new Set(placed.map((h) => h.scene_id).filter((id) => id !== null && id !== undefined))];
    panel.hidden = hits.length === 0 && !area;
    node("map-note").textContent = hits.length ? describe(hits.length, placed.length, sceneIds.length)
      : "nothing found in this area";
    node("map").hidden = (placed.length === 0 && !area) || !window.L;
    if (map) { scenes.clearLayers(); footprints.clearLayers(); areaLayer.clearLayers(); }
    polygons.clear();
    if (node("map").hidden) return;

    ensureMap();
    map.invalidateSize();  // the container may just have been unhidden
    // Fit first: a map without a view holds new layers back, and the polygons' elements are
    // needed right away for the card links.
    const corners = placed.flatMap((h) => latLngs(h.footprint));
    if (area) {
      L.rectangle(boxBounds(area), { className: "search-area", interactive: false }).addTo(areaLayer);
      if (!corners.length) corners.push(...[[area[1], area[0]], [area[3], area[2]]]);
    }
    map.fitBounds(L.latLngBounds(corners), { padding: [24, 24] });
    for (const hit of placed) {
      const polygon = L.polygon(latLngs(hit.footprint), { className: "footprint" });
      polygon.bindTooltip(tooltip(hit), { sticky: true });
      polygon.on("mouseover", () => { highlight(hit.id, true); onHover(hit, true); });
      polygon.on("mouseout", () => { highlight(hit.id, false); onHover(hit, false); });
      polygon.on("click", () => onPick(hit));
      polygon.addTo(footprints);
      polygon.getElement().setAttribute("data-id", hit.id);
      polygons.set(String(hit.id), polygon);
    }
    for (const id of sceneIds) addScene(id, generation);
  }

  return { show, highlight, isGeoreferenced, viewBox };
})();
