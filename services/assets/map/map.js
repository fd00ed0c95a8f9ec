// The quake map's page: EMSC's latest earthquakes on a Leaflet map and in a
// list, kept current through server-sent events.
//
// - Initial load: GET /api/quakes?limit=5000 (a GeoJSON FeatureCollection).
// - Live: EventSource /api/quakes/stream, one feature per create or update.
//   One marker per unid; a version with an older `lastupdate` than the one
//   shown is ignored. After a reconnect the page loads /api/quakes again, so
//   nothing sent while it was away is missed.
// - Everything that comes from the data is put in with textContent or as an
//   attribute value, never as HTML.
// - The settings (tile URL template and attribution) come from the JSON block
//   #config that the server renders.
(function () {
  "use strict";

  /** How many events the page asks for and keeps. */
  var MAX_EVENTS = 5000;
  /** How many events the list shows. */
  var LIST_SIZE = 100;
  /** How long a marker of a live event stays highlighted, ms. */
  var FLASH_MS = 8000;

  var config = readConfig();
  /** unid -> { props, time, lastupdate, marker, live } */
  var events = new Map();
  var threshold = 0;
  var streamState = "connecting";
  var loadError = null;

  var root = document.documentElement;
  var statusLine = document.getElementById("status");
  var list = document.getElementById("quake-list");
  var listEmpty = document.getElementById("list-empty");
  var slider = document.getElementById("min-mag");
  var sliderValue = document.getElementById("min-mag-value");

  // ---- the map ------------------------------------------------------------

  var map = L.map("map", { worldCopyJump: true, minZoom: 1, maxZoom: 18 });
  // The whole world: at zoom 2 on a laptop, 1 on a phone.
  map.setView([25, 10], map.getSize().x >= 800 ? 2 : 1);

  // The world outline, below the tiles: drawn while tiles cannot load (no
  // internet), covered by them once they do.
  map.createPane("world");
  map.getPane("world").style.zIndex = "150"; // the tile pane is 200
  map.getPane("world").style.pointerEvents = "none";

  fetch("/assets/world.geojson")
    .then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    })
    .then(function (world) {
      L.geoJSON(world, {
        pane: "world",
        interactive: false,
        attribution: "Outline: Natural Earth",
        style: { color: "#9a9486", weight: 0.7, fillColor: "#f2efe6", fillOpacity: 1 },
      }).addTo(map);
    })
    .catch(function (error) {
      console.warn("world outline not loaded:", error);
    });

  if (config.tile_url) {
    L.tileLayer(config.tile_url, { attribution: config.tile_attribution, maxZoom: 19 }).addTo(map);
  }

  var legend = L.control({ position: "topright" });
  legend.onAdd = function () {
    var box = L.DomUtil.create("div", "legend");
    var title = document.createElement("div");
    title.className = "legend-title";
    title.textContent = "Magnitude";
    box.appendChild(title);
    [
      [0, "< 2"],
      [2, "2 – 3"],
      [3, "3 – 4"],
      [4, "4 – 5"],
      [5, "5 – 6"],
      [6, "≥ 6"],
    ].forEach(function (step) {
      var row = document.createElement("div");
      var swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour(step[0]);
      row.appendChild(swatch);
      row.appendChild(document.createTextNode(step[1]));
      box.appendChild(row);
    });
    return box;
  };
  legend.addTo(map);

  // ---- events -------------------------------------------------------------

  function readConfig() {
    try {
      return JSON.parse(document.getElementById("config").textContent);
    } catch (error) {
      console.warn("no page config:", error);
      return {};
    }
  }

  function colour(mag) {
    if (mag >= 6) return "#7a0177";
    if (mag >= 5) return "#d7191c";
    if (mag >= 4) return "#f46d43";
    if (mag >= 3) return "#fdae61";
    if (mag >= 2) return "#fee08b";
    return "#a6d96a";
  }

  function radius(mag) {
    return Math.max(3, Math.min(30, 3 + (mag - 1) * 2.6));
  }

  function finite(x) {
    return typeof x === "number" && isFinite(x);
  }

  /** A feature's event, or null when it is not one the page can show. */
  function parse(feature) {
    var p = feature && feature.properties;
    if (!p || typeof p.unid !== "string" || p.unid === "") return null;
    if (!finite(p.lat) || !finite(p.lon) || !finite(p.mag)) return null;
    var time = Date.parse(p.time);
    var lastupdate = Date.parse(p.lastupdate);
    if (isNaN(time)) return null;
    return { props: p, time: time, lastupdate: isNaN(lastupdate) ? time : lastupdate };
  }

  function visible(ev) {
    return threshold <= 0 || ev.props.mag >= threshold;
  }

  /**
   * Adds or revises one event. Returns whether anything changed: a version
   * older than the one shown changes nothing.
   */
  function upsert(feature, live) {
    var ev = parse(feature);
    if (!ev) {
      console.warn("ignoring a feature that is not an event:", feature);
      return false;
    }
    var known = events.get(ev.props.unid);
    if (known) {
      if (ev.lastupdate < known.lastupdate) return false;
      known.props = ev.props;
      known.time = ev.time;
      known.lastupdate = ev.lastupdate;
      restyle(known);
      if (live) flash(known);
      return true;
    }
    ev.marker = L.circleMarker([ev.props.lat, ev.props.lon], markerStyle(ev.props.mag));
    ev.marker.on("add", function () {
      tag(ev);
    });
    ev.marker.bindPopup(function () {
      return popup(ev);
    });
    events.set(ev.props.unid, ev);
    if (visible(ev)) ev.marker.addTo(map);
    if (live) flash(ev);
    return true;
  }

  function markerStyle(mag) {
    return {
      className: "quake-marker",
      radius: radius(mag),
      color: "#3b3b3b",
      weight: 1,
      fillColor: colour(mag),
      fillOpacity: 0.8,
    };
  }

  /** The marker's element carries the event's unid and magnitude. */
  function tag(ev) {
    var element = ev.marker.getElement();
    if (!element) return;
    element.setAttribute("data-unid", ev.props.unid);
    element.setAttribute("data-mag", String(ev.props.mag));
    if (ev.flashUntil && ev.flashUntil > Date.now()) element.classList.add("quake-live");
  }

  function restyle(ev) {
    ev.marker.setLatLng([ev.props.lat, ev.props.lon]);
    ev.marker.setRadius(radius(ev.props.mag));
    ev.marker.setStyle({ fillColor: colour(ev.props.mag) });
    tag(ev);
    if (ev.marker.isPopupOpen()) ev.marker.getPopup().update();
  }

  function flash(ev) {
    ev.flashUntil = Date.now() + FLASH_MS;
    tag(ev);
    setTimeout(function () {
      var element = ev.marker.getElement();
      if (element && ev.flashUntil <= Date.now()) element.classList.remove("quake-live");
    }, FLASH_MS + 50);
  }

  /** Keeps the newest MAX_EVENTS events (by origin time). */
  function trim(sorted) {
    while (sorted.length > MAX_EVENTS) {
      var old = sorted.pop();
      old.marker.remove();
      events.delete(old.props.unid);
    }
  }

  // ---- text ---------------------------------------------------------------

  function utc(ms) {
    return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  var localFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric",
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    timeZoneName: "short",
  });

  function magnitude(p) {
    return "M " + p.mag.toFixed(1) + (p.magtype ? " " + p.magtype : "");
  }

  function region(p) {
    return typeof p.flynn_region === "string" && p.flynn_region !== "" ? p.flynn_region : "Unknown region";
  }

  function line(parent, tag, className, text) {
    var element = document.createElement(tag);
    if (className) element.className = className;
    element.textContent = text;
    parent.appendChild(element);
    return element;
  }

  function popup(ev) {
    var p = ev.props;
    var box = document.createElement("div");
    box.className = "quake-popup";
    line(box, "strong", "popup-region", region(p));
    line(box, "div", "popup-mag", magnitude(p));
    line(box, "div", "popup-utc", utc(ev.time));
    line(box, "div", "popup-local", "Local: " + localFormat.format(new Date(ev.time)));
    line(box, "div", "popup-depth", "Depth: " + (finite(p.depth) ? p.depth.toFixed(1) + " km" : "unknown"));
    var meta = [p.auth, p.unid].filter(function (x) {
      return typeof x === "string" && x !== "";
    });
    line(box, "div", "popup-meta", meta.join(" · "));
    return box;
  }

  // ---- list, filter, status -------------------------------------------------

  var scheduled = false;

  /** Redraws the list and the status line, at most once per 100 ms. */
  function refresh() {
    if (scheduled) return;
    scheduled = true;
    setTimeout(function () {
      scheduled = false;
      redraw();
    }, 100);
  }

  function redraw() {
    var sorted = Array.from(events.values()).sort(function (a, b) {
      return b.time - a.time;
    });
    trim(sorted);
    var shown = 0;
    var items = [];
    sorted.forEach(function (ev) {
      if (!visible(ev)) return;
      shown += 1;
      if (items.length < LIST_SIZE) items.push(listItem(ev));
    });
    list.replaceChildren.apply(list, items);
    listEmpty.hidden = items.length > 0 || root.dataset.loaded !== "true";
    root.dataset.shown = String(shown);
    showStatus(shown, sorted.length);
  }

  function listItem(ev) {
    var p = ev.props;
    var item = document.createElement("li");
    item.setAttribute("data-unid", p.unid);
    if (ev.flashUntil && ev.flashUntil > Date.now()) item.className = "quake-live";
    var button = document.createElement("button");
    button.type = "button";
    var mag = line(button, "span", "mag", p.mag.toFixed(1));
    mag.style.background = colour(p.mag);
    if (p.mag >= 5) mag.style.color = "#fff";
    var text = document.createElement("span");
    text.className = "text";
    line(text, "span", "region", region(p));
    line(text, "span", "when", utc(ev.time) + (finite(p.depth) ? " · " + p.depth.toFixed(0) + " km deep" : ""));
    button.appendChild(text);
    item.appendChild(button);
    return item;
  }

  list.addEventListener("click", function (event) {
    var item = event.target.closest("li[data-unid]");
    if (!item) return;
    var ev = events.get(item.getAttribute("data-unid"));
    if (!ev || !map.hasLayer(ev.marker)) return;
    map.setView(ev.marker.getLatLng(), Math.max(map.getZoom(), 5));
    ev.marker.openPopup();
  });

  function applyFilter() {
    var value = parseFloat(slider.value);
    threshold = isFinite(value) ? value : 0;
    sliderValue.textContent = threshold <= 0 ? "all" : "≥ " + threshold.toFixed(1);
    events.forEach(function (ev) {
      var show = visible(ev);
      if (show && !map.hasLayer(ev.marker)) ev.marker.addTo(map);
      else if (!show && map.hasLayer(ev.marker)) ev.marker.remove();
    });
    redraw();
  }

  slider.addEventListener("input", applyFilter);
  slider.addEventListener("change", applyFilter);

  function showStatus(shown, total) {
    var state = loadError ? "error" : streamState;
    var words = {
      connecting: "Connecting…",
      connected: "Live",
      reconnecting: "Reconnecting…",
      error: "Cannot load events (" + loadError + "), retrying…",
    };
    statusLine.dataset.state = state;
    statusLine.textContent =
      words[state] + " · " + shown + (shown === 1 ? " event" : " events") + " shown" + (shown !== total ? " of " + total : "");
  }

  // ---- loading and the stream ---------------------------------------------

  var loading = null;

  /** Loads the newest events; merges them with what the page has. */
  function load() {
    if (loading) return loading;
    loading = fetch("/api/quakes?limit=" + MAX_EVENTS, { headers: { Accept: "application/geo+json, application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (collection) {
        var features = Array.isArray(collection && collection.features) ? collection.features.slice() : [];
        // Largest first, so the smaller markers are drawn on top and stay clickable.
        features.sort(function (a, b) {
          return ((b.properties && b.properties.mag) || 0) - ((a.properties && a.properties.mag) || 0);
        });
        features.forEach(function (feature) {
          upsert(feature, false);
        });
        loadError = null;
        root.dataset.loaded = "true";
        redraw();
      })
      .catch(function (error) {
        console.warn("loading /api/quakes failed:", error);
        loadError = error.message || String(error);
        redraw();
        setTimeout(load, 10000);
      })
      .finally(function () {
        loading = null;
      });
    return loading;
  }

  var connectedBefore = false;

  function connect() {
    var source = new EventSource("/api/quakes/stream");
    source.onopen = function () {
      streamState = "connected";
      root.dataset.stream = "open";
      // Events sent while the page was not connected are in /api/quakes.
      if (connectedBefore) load();
      connectedBefore = true;
      refresh();
    };
    source.onmessage = function (message) {
      var feature;
      try {
        feature = JSON.parse(message.data);
      } catch (error) {
        console.warn("not JSON from the stream:", message.data);
        return;
      }
      if (upsert(feature, true)) refresh();
    };
    source.onerror = function () {
      streamState = "reconnecting";
      root.dataset.stream = "closed";
      refresh();
      // The browser retries by itself unless the server refused the stream.
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(connect, 5000);
      }
    };
  }

  applyFilter(); // the browser may have kept the slider's value over a reload
  connect();
  load();
})();
