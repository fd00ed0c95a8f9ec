//! The quake map's page: `GET /`, a Leaflet map of the latest earthquakes
//! with a list of them, a minimum-magnitude filter, and new and revised
//! events appearing live; and its static assets under `/assets/...`.
//!
//! Everything is compiled into the binary (`services/assets/map/`, vendored
//! by `scripts/vendor-map-assets.sh`): Leaflet, the page's script and style,
//! and a 1:110m world outline drawn below the tiles, so the map stays
//! readable when the tiles cannot load. Nothing is loaded from elsewhere but
//! the tiles.
//!
//! The page reads the quake-map API on the same server:
//! `GET /api/quakes?limit=5000` once, then `GET /api/quakes/stream`
//! (server-sent events, one GeoJSON feature per create or update).
//!
//! Settings ([`PageSettings::from_env`]):
//! - `MAP_TILE_URL`: the tile URL template (default [`DEFAULT_TILE_URL`],
//!   OpenStreetMap's); set but empty, the page draws no tiles, only the outline;
//! - `MAP_TILE_ATTRIBUTION`: the tiles' attribution, HTML as Leaflet shows it
//!   (default [`DEFAULT_TILE_ATTRIBUTION`]).
//!
//! `/` is never cached (`no-cache`) and names its assets with a version
//! (`?v=`, a hash of their bytes), so the assets can be cached for a day.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

/// OpenStreetMap's tiles, the default `MAP_TILE_URL`.
pub const DEFAULT_TILE_URL: &str = "https://tile.openstreetmap.org/{z}/{x}/{y}.png";
/// The attribution OpenStreetMap's tiles require, the default `MAP_TILE_ATTRIBUTION`.
pub const DEFAULT_TILE_ATTRIBUTION: &str =
    r#"&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors"#;

const PAGE: &str = include_str!("../../assets/map/index.html");

/// What `/assets/{path}` serves: path, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("map.js", JAVASCRIPT, include_bytes!("../../assets/map/map.js")),
    ("map.css", CSS, include_bytes!("../../assets/map/map.css")),
    ("world.geojson", GEOJSON, include_bytes!("../../assets/map/world.geojson")),
    ("leaflet/leaflet.js", JAVASCRIPT, include_bytes!("../../assets/map/leaflet/leaflet.js")),
    ("leaflet/leaflet.css", CSS, include_bytes!("../../assets/map/leaflet/leaflet.css")),
    ("leaflet/images/layers.png", PNG, include_bytes!("../../assets/map/leaflet/images/layers.png")),
    ("leaflet/images/layers-2x.png", PNG, include_bytes!("../../assets/map/leaflet/images/layers-2x.png")),
    ("leaflet/images/marker-icon.png", PNG, include_bytes!("../../assets/map/leaflet/images/marker-icon.png")),
    ("leaflet/images/marker-icon-2x.png", PNG, include_bytes!("../../assets/map/leaflet/images/marker-icon-2x.png")),
    ("leaflet/images/marker-shadow.png", PNG, include_bytes!("../../assets/map/leaflet/images/marker-shadow.png")),
];

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const GEOJSON: &str = "application/geo+json";
const PNG: &str = "image/png";

/// How long browsers may keep an asset.
const ASSET_CACHE: &str = "public, max-age=86400";

/// What the page may load: its own assets and API, and images (the tiles)
/// from anywhere. No inline scripts: the config block is data, not script.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; connect-src 'self'; \
     img-src 'self' data: http: https:; style-src 'self' 'unsafe-inline'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'self'";

/// The page's settings: where its tiles come from.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct PageSettings {
    /// Leaflet's tile URL template (`{z}`, `{x}`, `{y}`, `{s}`); empty: no tiles.
    pub tile_url: String,
    /// The tiles' attribution, HTML.
    pub tile_attribution: String,
}

impl Default for PageSettings {
    /// OpenStreetMap's tiles.
    fn default() -> PageSettings {
        PageSettings { tile_url: DEFAULT_TILE_URL.to_owned(), tile_attribution: DEFAULT_TILE_ATTRIBUTION.to_owned() }
    }
}

impl PageSettings {
    /// `MAP_TILE_URL` and `MAP_TILE_ATTRIBUTION`, each its default when unset.
    pub fn from_env() -> PageSettings {
        PageSettings::from_vars(|name| std::env::var(name).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> PageSettings {
        let defaults = PageSettings::default();
        PageSettings {
            tile_url: var("MAP_TILE_URL").map_or(defaults.tile_url, |url| url.trim().to_owned()),
            tile_attribution: var("MAP_TILE_ATTRIBUTION").unwrap_or(defaults.tile_attribution),
        }
    }
}

/// The page at `/` and its assets under `/assets/...`; merge them into the
/// quake-map API's routes.
#[expect(clippy::needless_pass_by_value, reason = "the settings are handed over, as the service's own are")]
pub fn routes(settings: PageSettings) -> Router {
    let page = Arc::new(render(&settings));
    Router::new().route("/", get(page_handler)).route("/assets/{*path}", get(asset)).with_state(page)
}

/// The page with its settings and asset version filled in.
fn render(settings: &PageSettings) -> String {
    PAGE.replace("{{VERSION}}", &version()).replace("{{CONFIG}}", &script_json(settings))
}

/// JSON that can stand inside a `<script>` element: no `<`, `>` or `&`
/// (so no `</script>` and no `<!--`), and no line separators.
fn script_json(value: &impl Serialize) -> String {
    // Serializing a struct of strings cannot fail; `null` would only mean no settings.
    let json = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// A hash of the assets (FNV-1a, hex): changes when any of them does.
fn version() -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in ASSETS.iter().flat_map(|(path, _, body)| path.as_bytes().iter().chain(body.iter())) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", hash >> 16)
}

async fn page_handler(State(page): State<Arc<String>>) -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page.as_str().to_owned()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, ASSET_CACHE),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "no such asset\n")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A response: status, headers (names lower case), body.
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Answer {
        fn header(&self, name: &str) -> &str {
            self.headers.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str())
        }

        fn text(&self) -> String {
            String::from_utf8(self.body.clone()).unwrap()
        }
    }

    /// Serves `routes(settings)` on 127.0.0.1, on a port of its own.
    async fn serve(settings: PageSettings) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, routes(settings)).await });
        addr
    }

    /// `GET path` over HTTP/1.0.
    async fn get(addr: SocketAddr, path: &str) -> Answer {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.unwrap();
            raw
        };
        let raw = tokio::time::timeout(std::time::Duration::from_secs(10), exchange).await.unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Answer { status, headers, body: raw[split + 4..].to_vec() }
    }

    /// The text of the page's `<script type="application/json" id="config">`.
    fn config_block(page: &str) -> &str {
        let open = r#"<script type="application/json" id="config">"#;
        let start = page.find(open).expect("a config block") + open.len();
        let end = start + page[start..].find("</script>").expect("the config block's end");
        &page[start..end]
    }

    #[tokio::test]
    async fn the_page_carries_its_settings_escaped() {
        let hostile = PageSettings {
            tile_url: "https://tiles.example/</script><script>alert(1)</script><!--{z}/{x}/{y}.png?a=1&b=2".into(),
            tile_attribution: "<b>Tiles</b> &copy; \"them\" </SCRIPT> \u{2028}".into(),
        };
        let addr = serve(hostile.clone()).await;
        let answer = get(addr, "/").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("content-type"), "text/html; charset=utf-8");
        assert_eq!(answer.header("cache-control"), "no-cache");
        assert!(answer.header("content-security-policy").contains("script-src 'self'"));
        let page = answer.text();
        let block = config_block(&page);
        assert!(!block.contains(['<', '>', '&', '\u{2028}']), "{block}");
        let config: serde_json::Value = serde_json::from_str(block).unwrap();
        assert_eq!(config["tile_url"], hostile.tile_url);
        assert_eq!(config["tile_attribution"], hostile.tile_attribution);
        // Nothing of the settings leaked out as markup: three scripts, the config and two sources.
        assert_eq!(page.matches("<script").count(), 3, "{page}");
        assert!(!page.contains("alert(1)</script>"));
        assert!(page.contains(r#"id="min-mag""#));
        // The assets named with the version.
        let v = version();
        for asset in ["/assets/map.js", "/assets/map.css", "/assets/leaflet/leaflet.js", "/assets/leaflet/leaflet.css"]
        {
            assert!(page.contains(&format!("{asset}?v={v}")), "{asset} in {page}");
        }
        assert!(!page.contains("{{"));
    }

    #[tokio::test]
    async fn the_assets_are_served_with_their_content_types() {
        let addr = serve(PageSettings::default()).await;
        let expected = [
            ("/assets/map.js", JAVASCRIPT),
            ("/assets/map.css", CSS),
            ("/assets/world.geojson", GEOJSON),
            ("/assets/leaflet/leaflet.js", JAVASCRIPT),
            ("/assets/leaflet/leaflet.css", CSS),
            ("/assets/leaflet/images/layers.png", PNG),
            ("/assets/map.js?v=0123", JAVASCRIPT),
        ];
        for (path, content_type) in expected {
            let answer = get(addr, path).await;
            assert_eq!(answer.status, 200, "{path}");
            assert_eq!(answer.header("content-type"), content_type, "{path}");
            assert_eq!(answer.header("cache-control"), ASSET_CACHE, "{path}");
            assert_eq!(answer.header("x-content-type-options"), "nosniff", "{path}");
        }
        let leaflet = get(addr, "/assets/leaflet/leaflet.js").await;
        assert_eq!(leaflet.body, include_bytes!("../../assets/map/leaflet/leaflet.js"));
        let world: serde_json::Value = serde_json::from_slice(&get(addr, "/assets/world.geojson").await.body).unwrap();
        assert_eq!(world["type"], "FeatureCollection");
        assert!(world["features"].as_array().unwrap().len() > 100);
        // The page's default: OpenStreetMap.
        let page = get(addr, "/").await.text();
        let config: serde_json::Value = serde_json::from_str(config_block(&page)).unwrap();
        assert_eq!(config["tile_url"], DEFAULT_TILE_URL);
        assert_eq!(config["tile_attribution"], DEFAULT_TILE_ATTRIBUTION);
    }

    #[tokio::test]
    async fn an_unknown_asset_is_a_404() {
        let addr = serve(PageSettings::default()).await;
        for path in
            ["/assets/nothing.js", "/assets/leaflet", "/assets/leaflet/", "/assets/../Cargo.toml", "/assets/index.html"]
        {
            let answer = get(addr, path).await;
            assert_eq!(answer.status, 404, "{path}");
        }
    }

    #[test]
    fn settings_default_to_openstreetmap() {
        let none = PageSettings::from_vars(|_| None);
        assert_eq!(none, PageSettings::default());
        assert_eq!(none.tile_url, DEFAULT_TILE_URL);
        let set = PageSettings::from_vars(|name| match name {
            "MAP_TILE_URL" => Some(" https://tiles.example/{z}/{x}/{y}.png ".into()),
            "MAP_TILE_ATTRIBUTION" => Some("Example".into()),
            _ => None,
        });
        assert_eq!(set.tile_url, "https://tiles.example/{z}/{x}/{y}.png");
        assert_eq!(set.tile_attribution, "Example");
        // Set but empty: no tiles, the world outline only.
        let empty = PageSettings::from_vars(|name| (name == "MAP_TILE_URL").then(String::new));
        assert_eq!(empty.tile_url, "");
        assert_eq!(empty.tile_attribution, DEFAULT_TILE_ATTRIBUTION);
    }
}
