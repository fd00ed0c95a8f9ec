#!/usr/bin/env bash
# Regenerates the quake map's vendored assets from npm, at pinned versions:
#   services/assets/map/leaflet/      Leaflet's dist (leaflet.js, leaflet.css, images/) and LICENSE
#   services/assets/map/world.geojson the world's countries at 1:110m (world-atlas, Natural Earth),
#                                     converted from TopoJSON with topojson-client, cut for a flat
#                                     map at the antimeridian, coordinates rounded to 2 decimals,
#                                     properties reduced to the name
# Needs node and npm and access to the npm registry; writes nothing else.
# services/assets/map/README.md names the sources and licenses.
set -euo pipefail
cd "$(dirname "$0")/.."

LEAFLET_VERSION=1.9.4
WORLD_ATLAS_VERSION=2.0.2
TOPOJSON_CLIENT_VERSION=3.1.0

say() { printf '[vendor-map-assets] %s\n' "$*"; }
fail() { printf '[vendor-map-assets] FAILED: %s\n' "$*" >&2; exit 1; }

command -v node >/dev/null || fail "node is not installed"
command -v npm >/dev/null || fail "npm is not installed"

OUT=services/assets/map
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say "npm pack leaflet@$LEAFLET_VERSION world-atlas@$WORLD_ATLAS_VERSION"
(cd "$work" && npm pack --silent "leaflet@$LEAFLET_VERSION" "world-atlas@$WORLD_ATLAS_VERSION" >/dev/null) \
    || fail "npm pack"
mkdir -p "$work/leaflet" "$work/world-atlas"
tar -xzf "$work/leaflet-$LEAFLET_VERSION.tgz" -C "$work/leaflet" --strip-components=1
tar -xzf "$work/world-atlas-$WORLD_ATLAS_VERSION.tgz" -C "$work/world-atlas" --strip-components=1

say "copying Leaflet's dist into $OUT/leaflet"
rm -rf "$OUT/leaflet"
mkdir -p "$OUT/leaflet/images"
cp "$work/leaflet/dist/leaflet.js" "$work/leaflet/dist/leaflet.css" "$work/leaflet/LICENSE" "$OUT/leaflet/"
cp "$work/leaflet/dist/images/"*.png "$OUT/leaflet/images/"

say "converting world-atlas countries-110m.json to GeoJSON (topojson-client@$TOPOJSON_CLIENT_VERSION)"
mkdir -p "$work/convert"
(cd "$work/convert" && npm init -y >/dev/null && \
    npm install --silent --no-audit --no-fund --ignore-scripts "topojson-client@$TOPOJSON_CLIENT_VERSION" >/dev/null) \
    || fail "npm install topojson-client"
cat >"$work/convert/convert.cjs" <<'JS'
// world-atlas's countries as GeoJSON for a flat (Web Mercator) map. world-atlas
// is made for spherical projections: a ring that crosses the antimeridian jumps
// from 180 to -180 (drawn flat, a line across the world), and Antarctica's ring
// goes round the pole. Each ring is made continuous (longitudes beyond +-180),
// a ring round a pole is closed along the pole, and a polygon that reaches
// beyond +-180 gets a copy shifted by 360 degrees, so both sides are drawn.
const fs = require("fs");
const { feature } = require("topojson-client");
const [input, output] = process.argv.slice(2);
const topology = JSON.parse(fs.readFileSync(input, "utf8"));
const countries = feature(topology, topology.objects.countries);
const r2 = (v) => Math.round(v * 100) / 100;

function unwrap(ring, near) {
  let previous = near;
  const out = ring.map(([x, y]) => {
    while (x - previous > 180) x -= 360;
    while (x - previous < -180) x += 360;
    previous = x;
    return [x, y];
  });
  const [first, last] = [out[0], out[out.length - 1]];
  if (Math.abs(last[0] - first[0]) > 180) {
    const pole = out.reduce((sum, p) => sum + p[1], 0) < 0 ? -90 : 90;
    out.push([last[0], pole], [first[0], pole], [first[0], first[1]]);
  }
  return out;
}

function clean(ring) {
  const rounded = ring.map(([x, y]) => [r2(x), r2(y)]);
  return rounded.filter((p, i) => i === 0 || p[0] !== rounded[i - 1][0] || p[1] !== rounded[i - 1][1]);
}

const shift = (polygon, dx) => polygon.map((ring) => ring.map(([x, y]) => [r2(x + dx), y]));

const features = [];
for (const f of countries.features) {
  if (!f.geometry) continue;
  const input = f.geometry.type === "Polygon" ? [f.geometry.coordinates] : f.geometry.coordinates;
  const polygons = [];
  for (const rings of input) {
    const outer = unwrap(rings[0], rings[0][0][0]);
    const polygon = [outer, ...rings.slice(1).map((hole) => unwrap(hole, outer[0][0]))]
      .map(clean)
      .filter((ring) => ring.length >= 4);
    if (polygon.length === 0) continue;
    polygons.push(polygon);
    const xs = polygon[0].map((p) => p[0]);
    if (Math.max(...xs) > 180) polygons.push(shift(polygon, -360));
    if (Math.min(...xs) < -180) polygons.push(shift(polygon, 360));
  }
  if (polygons.length === 0) continue;
  features.push({
    type: "Feature",
    properties: { name: f.properties.name },
    geometry: polygons.length === 1 ? { type: "Polygon", coordinates: polygons[0] } : { type: "MultiPolygon", coordinates: polygons },
  });
}
fs.writeFileSync(output, JSON.stringify({ type: "FeatureCollection", features }) + "\n");
console.log(`${features.length} countries, ${fs.statSync(output).size} bytes`);
JS
node "$work/convert/convert.cjs" "$work/world-atlas/countries-110m.json" "$OUT/world.geojson" \
    || fail "converting the world outline"
cp "$work/world-atlas/LICENSE" "$OUT/world-atlas.LICENSE" 2>/dev/null || true
say "done: $OUT/leaflet, $OUT/world.geojson"
