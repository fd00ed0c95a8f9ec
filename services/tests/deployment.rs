//! Static checks of the deployment, for a machine without a Docker engine:
//! `docker-compose.yaml` (parsed with `compose_spec` and validated against the
//! Compose JSON schema), `services/Dockerfile`, the Prometheus configuration
//! (and `promtool`), the Grafana provisioning and dashboards, the Mosquitto
//! configuration, the load balancer's nginx configuration, Loki's and Alloy's.
//! `nginx -t` and nginx itself run in `load_balancer.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use compose_spec::service::healthcheck::Test;
use compose_spec::service::volumes::{Mount, into_long_iter};
use compose_spec::service::{Build, Command as ServiceCommand, Condition, Healthcheck, Restart, ports};
use compose_spec::{Compose, ListOrMap, Service, ShortOrLong};
use serde_json::Value as Json;

/// The services built from `services/Dockerfile`: compose service, binary of
/// strom-services, HTTP port (`STROM_WEB_PORT`). The sensor pipeline (README),
/// then the earthquake pipeline, whose map runs as two replicas.
const SERVICES: [(&str, &str, u16); 10] = [
    ("sensor-simulator", "sensor-simulator", 7001),
    ("collection", "collection", 7002),
    ("processing", "processing", 7003),
    ("aggregation", "aggregation", 7004),
    ("db-loader", "db-loader", 7005),
    ("api-gateway", "api-gateway", 8007),
    ("quake-source", "quake-source", 7101),
    ("quake-loader", "quake-loader", 7102),
    ("quake-map-1", "quake-map", 8080),
    ("quake-map-2", "quake-map", 8080),
];

/// The replicas of quake-map: the load balancer's upstreams.
const MAP_REPLICAS: [&str; 2] = ["quake-map-1", "quake-map-2"];

/// The infrastructure and the image each must run.
const INFRASTRUCTURE: [(&str, &str); 8] = [
    ("kafka", "apache/kafka"),
    ("mosquitto", "eclipse-mosquitto"),
    ("postgres", "postgres"),
    ("prometheus", "prom/prometheus"),
    ("grafana", "grafana/grafana"),
    ("loki", "grafana/loki"),
    ("alloy", "grafana/alloy"),
    ("quake-lb", "nginx"),
];

/// The only ports published to the host, what a user opens: service, host
/// address (all interfaces when none), port (the same on both sides).
const PUBLISHED: [(&str, Option<&str>, u16); 4] = [
    ("api-gateway", None, 8007),
    ("grafana", None, 3000),
    ("prometheus", None, 9090),
    ("quake-lb", Some("127.0.0.1"), 8080),
];

/// Every metric the dashboards may query, each shown by one at least: the
/// library's, the sensor services' and the earthquake services' own.
const METRICS: [&str; 26] = [
    // the library's
    "strom_events_received_total",
    "strom_events_processed_total",
    "strom_messages_produced_total",
    "strom_dead_letters_total",
    "strom_consumer_lag",
    "strom_processing_latency_seconds_bucket",
    "strom_rows_loaded_total",
    // the sensor pipeline's
    "strom_mqtt_messages_received_total",
    "strom_sensor_to_db_latency_seconds_bucket",
    "strom_api_requests_total",
    "strom_api_latest_value_age_seconds",
    // quake-source's
    "strom_websocket_connects_total",
    "strom_websocket_disconnects_total",
    "strom_websocket_frames_received_total",
    "strom_websocket_bytes_received_total",
    "strom_websocket_dead_letters_total",
    "strom_websocket_seconds_since_last_frame",
    "strom_websocket_connected",
    "strom_websocket_lost_total",
    "strom_quake_events_total",
    // quake-loader's
    "strom_quake_stale_updates_total",
    // quake-map's
    "strom_quake_map_events",
    "strom_quake_sse_clients",
    "strom_quake_sse_dropped_total",
    "strom_quake_newest_event_age_seconds",
    "strom_quake_map_requests_total",
];

/// The dashboards (config/grafana/dashboards) on Prometheus, and the fewest
/// panels each has.
const METRIC_DASHBOARDS: [(&str, usize); 2] = [("services_dashboard.json", 9), ("quake_dashboard.json", 12)];

/// The dashboard of the earthquake pipeline's logs, on Loki.
const LOG_DASHBOARD: &str = "quake_logs.json";

/// The fixed uids of the provisioned datasources, by type.
const DATASOURCES: [(&str, &str, &str); 2] =
    [("prometheus", "strom-prometheus", "http://prometheus:9090"), ("loki", "strom-loki", "http://loki:3100")];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("services/ sits in the repository").to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn compose() -> Compose {
    Compose::options()
        .from_yaml_str(&read("docker-compose.yaml"))
        .expect("docker-compose.yaml parses as a Compose file")
}

fn service<'a>(compose: &'a Compose, name: &str) -> &'a Service {
    compose.services.get(name).unwrap_or_else(|| panic!("docker-compose.yaml has no service {name}"))
}

/// A `list_or_dict` (environment, build args) as strings.
fn map(list_or_map: &ListOrMap) -> BTreeMap<String, String> {
    list_or_map
        .clone()
        .into_map()
        .expect("valid keys")
        .into_iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.map(|v| v.to_string()).unwrap_or_default()))
        .collect()
}

fn environment(service: &Service) -> BTreeMap<String, String> {
    map(&service.environment)
}

fn healthcheck_command(name: &str, service: &Service) -> String {
    let Some(Healthcheck::Command(check)) = &service.healthcheck else {
        panic!("{name} has no healthcheck");
    };
    match check.test.as_ref().unwrap_or_else(|| panic!("{name}: healthcheck without a test")) {
        Test::Command(args) => args.join(" "),
        Test::ShellCommand(command) => command.clone(),
    }
}

/// A service's `command` as its arguments.
fn command_args(name: &str, service: &Service) -> Vec<String> {
    match service.command.as_ref().unwrap_or_else(|| panic!("{name} has no command")) {
        ServiceCommand::List(args) => args.clone(),
        ServiceCommand::String(command) => command.split_whitespace().map(str::to_owned).collect(),
    }
}

/// A mount of a service: a bind mount of a host path, or a volume.
struct Mounted {
    /// The host path as written for a bind mount, the volume's name for a
    /// named volume, nothing for an anonymous one.
    source: Option<String>,
    /// The path in the container.
    target: String,
    bind: bool,
    read_only: bool,
}

impl Mounted {
    fn named_volume(&self) -> Option<&str> {
        if self.bind { None } else { self.source.as_deref() }
    }
}

fn mounts(service: &Service) -> Vec<Mounted> {
    into_long_iter(service.volumes.clone())
        .map(|mount| match mount {
            Mount::Bind(bind) => Mounted {
                source: Some(bind.source.as_path().display().to_string()),
                target: bind.common.target.as_path().display().to_string(),
                bind: true,
                read_only: bind.common.read_only,
            },
            Mount::Volume(volume) => Mounted {
                source: volume.source.map(|s| s.as_str().to_owned()),
                target: volume.common.target.as_path().display().to_string(),
                bind: false,
                read_only: volume.common.read_only,
            },
            other => panic!("unexpected mount {other:?}"),
        })
        .collect()
}

/// The container path of the named volume mounted in `service`, if one is.
fn volume_target(compose: &Compose, service_name: &str) -> Option<String> {
    mounts(service(compose, service_name)).into_iter().find(|m| m.named_volume().is_some()).map(|m| m.target)
}

/// The container path a repository path is bind-mounted at in `service`.
fn mounted_at(compose: &Compose, service_name: &str, repo_path: &str) -> String {
    mounts(service(compose, service_name))
        .into_iter()
        .find(|m| m.bind && m.source.as_deref().map(|s| s.trim_start_matches("./")) == Some(repo_path))
        .map(|m| m.target)
        .unwrap_or_else(|| panic!("{service_name} does not mount ./{repo_path}"))
}

#[test]
fn compose_parses_and_every_resource_it_uses_is_defined() {
    let compose = compose();
    compose.validate_all().expect("networks, volumes, configs and secrets used are defined");
    for (name, service) in &compose.services {
        for mount in mounts(service) {
            if let Some(volume) = mount.named_volume() {
                assert!(
                    compose.volumes.contains_key(volume),
                    "{name}: volume {volume} ({}) is not declared",
                    mount.target
                );
            }
        }
    }
}

#[test]
fn compose_is_valid_against_the_compose_schema() {
    let schema: Json = serde_json::from_str(&read("config/schemas/compose-spec.json")).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the Compose schema compiles");

    let document: Json = serde_yaml::from_str(&read("docker-compose.yaml")).expect("docker-compose.yaml is YAML");
    let errors: Vec<String> =
        validator.iter_errors(&document).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "docker-compose.yaml breaks the Compose schema:\n{}", errors.join("\n"));

    // The validator does reject what the schema forbids.
    let mut broken = document;
    broken["services"]["kafka"]["restart_policy"] = Json::from("always");
    broken["services"]["postgres"]["depends_on"] = serde_json::json!({"kafka": {"condition": "when_ready"}});
    assert!(validator.iter_errors(&broken).count() >= 2, "the schema catches an unknown key and a bad condition");
}

#[test]
fn every_pipeline_service_is_built_from_the_dockerfile_with_its_port_and_healthcheck() {
    let compose = compose();
    for (name, binary, port) in SERVICES {
        let service = service(&compose, name);
        let build = match service.build.as_ref().unwrap_or_else(|| panic!("{name} is not built")) {
            ShortOrLong::Long(build) => build.clone(),
            ShortOrLong::Short(_) => panic!("{name}: build needs the long form (dockerfile and args)"),
        };
        let Build { context, dockerfile, args, .. } = build;
        let context = format!("{:?}", context.expect("build context"));
        assert!(context.contains("\".\""), "{name}: build context is the repository root, got {context}");
        let dockerfile = format!("{:?}", dockerfile.expect("dockerfile"));
        assert!(dockerfile.contains("services/Dockerfile"), "{name}: built from services/Dockerfile, got {dockerfile}");
        let args = map(&args);
        assert_eq!(args.get("SERVICE").map(String::as_str), Some(binary), "{name}: build arg SERVICE");
        assert_eq!(args.get("STROM_WEB_PORT"), Some(&port.to_string()), "{name}: build arg STROM_WEB_PORT");

        let env = environment(service);
        assert_eq!(env.get("STROM_WEB_PORT"), Some(&port.to_string()), "{name}: STROM_WEB_PORT");
        assert_eq!(env.get("STROM_BROKER").map(String::as_str), Some("kafka://kafka:9092"), "{name}: STROM_BROKER");
        assert_eq!(env.get("STROM_LOG_FORMAT").map(String::as_str), Some("json"), "{name}: logs JSON lines for Loki");
        let image = service.image.as_ref().unwrap_or_else(|| panic!("{name}: image name"));
        assert_eq!(image.as_str(), format!("strom/{binary}"), "{name}: the image is named after the binary");

        let check = healthcheck_command(name, service);
        assert!(
            check.contains(&format!("127.0.0.1:{port}/health")),
            "{name}: healthcheck asks /health on {port}: {check}"
        );
        assert!(matches!(service.restart, Some(Restart::UnlessStopped | Restart::Always)), "{name}: restart policy");
        let grace = service.stop_grace_period.expect("stop_grace_period");
        assert!(grace.as_secs() > 30, "{name}: stop_grace_period above STROM_SHUTDOWN_TIMEOUT_MS (30 s)");
    }
}

#[test]
fn pipeline_services_reach_mqtt_postgres_and_keep_table_state_on_a_volume() {
    let compose = compose();
    for name in ["sensor-simulator", "collection"] {
        let env = environment(service(&compose, name));
        assert_eq!(env.get("MQTT_URL").map(String::as_str), Some("mqtt://mosquitto:1883"), "{name}: MQTT_URL");
    }
    for name in ["db-loader", "api-gateway", "quake-loader"] {
        let env = environment(service(&compose, name));
        let url = env.get("DATABASE_URL").unwrap_or_else(|| panic!("{name}: DATABASE_URL"));
        assert!(url.starts_with("postgres://postgres:"), "{name}: DATABASE_URL {url}");
        assert!(url.ends_with("@postgres:5432/strom"), "{name}: DATABASE_URL {url}");
        assert!(url.contains("${POSTGRES_PASSWORD"), "{name}: the password comes from the environment");
    }
    let postgres = environment(service(&compose, "postgres"));
    assert_eq!(postgres.get("POSTGRES_DB").map(String::as_str), Some("strom"));

    let source = environment(service(&compose, "quake-source"));
    let emsc = source.get("EMSC_URL").expect("quake-source: EMSC_URL");
    assert!(
        emsc.starts_with("${EMSC_URL:-wss://www.seismicportal.eu/standing_order/websocket}"),
        "quake-source: EMSC's websocket unless EMSC_URL says otherwise: {emsc}"
    );
    let mut replicas = Vec::new();
    for name in MAP_REPLICAS {
        let env = environment(service(&compose, name));
        for key in ["MAP_TILE_URL", "MAP_TILE_ATTRIBUTION"] {
            assert!(env.get(key).is_some_and(|v| !v.is_empty()), "{name}: {key}");
        }
        assert!(env["MAP_TILE_URL"].contains("{z}/{x}/{y}"), "{name}: MAP_TILE_URL is a tile template");
        replicas.push(env);
    }
    assert!(replicas.windows(2).all(|w| w[0] == w[1]), "the map replicas run with the same environment");

    let aggregation = service(&compose, "aggregation");
    let state_dir = environment(aggregation).get("STROM_STATE_DIR").cloned().expect("aggregation: STROM_STATE_DIR");
    let volume = volume_target(&compose, "aggregation").expect("aggregation has a named volume");
    assert!(Path::new(&state_dir).starts_with(&volume), "aggregation: STROM_STATE_DIR {state_dir} lies on {volume}");
}

#[test]
fn infrastructure_is_there_with_healthchecks() {
    let compose = compose();
    for (name, image) in INFRASTRUCTURE {
        let service = service(&compose, name);
        let actual = service.image.as_ref().unwrap_or_else(|| panic!("{name} has no image"));
        assert_eq!(actual.name(), image, "{name}: image");
        assert!(actual.tag().is_some_and(|t| t != "latest"), "{name}: image pinned to a version");
        healthcheck_command(name, service);
        assert!(service.restart.is_some(), "{name}: restart policy");
    }
    let postgres_data = volume_target(&compose, "postgres");
    assert_eq!(postgres_data.as_deref(), Some("/var/lib/postgresql/data"), "postgres keeps its data on a volume");
    let kafka_data = volume_target(&compose, "kafka");
    assert_eq!(kafka_data.as_deref(), Some("/var/lib/kafka/data"), "kafka keeps its topics on a volume");
    let kafka = environment(service(&compose, "kafka"));
    assert_eq!(kafka.get("KAFKA_LOG_DIRS"), kafka_data.as_ref(), "kafka writes its logs to the volume");
    assert_eq!(kafka.get("KAFKA_PROCESS_ROLES").map(String::as_str), Some("broker,controller"), "KRaft, one node");
    assert_eq!(kafka.get("KAFKA_ADVERTISED_LISTENERS").map(String::as_str), Some("PLAINTEXT://kafka:9092"));
}

#[test]
fn every_dependency_exists_and_is_awaited_healthy() {
    let compose = compose();
    for (name, service) in &compose.services {
        let dependencies = match &service.depends_on {
            ShortOrLong::Short(set) => {
                assert!(set.is_empty(), "{name}: depends_on needs conditions (long form)");
                continue;
            }
            ShortOrLong::Long(map) => map,
        };
        for (target, dependency) in dependencies {
            let Some(depended) = compose.services.get(target.as_str()) else {
                panic!("{name} depends on {target}, which is not a service");
            };
            assert_eq!(dependency.condition, Condition::ServiceHealthy, "{name} waits for {target} to be healthy");
            healthcheck_command(target.as_str(), depended);
        }
    }
    // What each pipeline service needs before it starts.
    let needs = [
        ("sensor-simulator", &["mosquitto", "collection"][..]),
        ("collection", &["kafka", "mosquitto"]),
        ("processing", &["kafka"]),
        ("aggregation", &["kafka"]),
        ("db-loader", &["kafka", "postgres"]),
        ("api-gateway", &["postgres"]),
        ("quake-source", &["kafka"]),
        ("quake-loader", &["kafka", "postgres"]),
        ("quake-map-1", &["kafka"]),
        ("quake-map-2", &["kafka"]),
        // nginx resolves its upstreams' names when it starts.
        ("quake-lb", &MAP_REPLICAS),
        ("alloy", &["loki"]),
        ("grafana", &["prometheus", "loki"]),
    ];
    for (name, targets) in needs {
        let ShortOrLong::Long(deps) = &service(&compose, name).depends_on else { panic!("{name}: depends_on") };
        for target in targets {
            assert!(deps.contains_key(*target), "{name} waits for {target}");
        }
    }
}

#[test]
fn only_grafana_prometheus_the_api_and_the_map_are_published() {
    let compose = compose();
    let mut published = BTreeSet::new();
    for (name, service) in &compose.services {
        for port in ports::into_long_iter(service.ports.clone()) {
            let host = port.published.map(|p| p.to_string()).unwrap_or_default();
            let address = port.host_ip.map(|ip| ip.to_string());
            published.insert((name.as_str().to_owned(), address, host, port.target));
        }
    }
    let expected: BTreeSet<_> = PUBLISHED
        .iter()
        .map(|(name, address, port)| ((*name).to_owned(), address.map(str::to_owned), port.to_string(), *port))
        .collect();
    assert_eq!(published, expected);
    // Loki and Alloy, in particular, are reached through Grafana only.
    for name in ["loki", "alloy", "quake-map-1", "quake-map-2"] {
        assert!(!published.iter().any(|(service, ..)| service == name), "{name} is not published");
    }
}

/// The Docker daemon's socket, which Alloy reads the containers and their logs from.
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

#[test]
fn mounted_config_files_exist_in_the_repository() {
    let compose = compose();
    let mut mounted = BTreeSet::new();
    for (name, service) in &compose.services {
        for Mounted { source, target, bind, read_only } in mounts(service) {
            if !bind {
                continue;
            }
            let source = source.expect("a bind has a source");
            assert!(read_only, "{name}: {source} is mounted read-only");
            if source == DOCKER_SOCKET {
                assert_eq!(name.as_str(), "alloy", "only Alloy reads the Docker socket");
                assert_eq!(target, DOCKER_SOCKET, "{name}: the socket where the Docker client looks");
                continue;
            }
            assert!(source.starts_with("./"), "{name}: bind mounts are relative to the repository: {source}");
            let path = repo().join(&source);
            assert!(path.exists(), "{name}: {source} (mounted at {target}) is not in the repository");
            mounted.insert(source.trim_start_matches("./").to_owned());
        }
    }
    for needed in [
        "config/mosquitto/mosquitto.conf",
        "config/prometheus/prometheus.yaml",
        "config/grafana/provisioning",
        "config/grafana/dashboards",
        "config/nginx/nginx.conf",
        "config/loki/config.yaml",
        "config/alloy/config.alloy",
    ] {
        assert!(mounted.contains(needed), "{needed} is mounted");
    }
}

#[test]
fn no_credentials_in_the_compose_file() {
    let compose = compose();
    for (name, service) in &compose.services {
        for (key, value) in environment(service) {
            if key.contains("PASSWORD") {
                assert!(value.starts_with("${") && value.ends_with('}'), "{name}: {key} comes from the environment");
            }
        }
    }
    let grafana = environment(service(&compose, "grafana"));
    let password = grafana.get("GF_SECURITY_ADMIN_PASSWORD").expect("grafana admin password set");
    assert!(
        password.starts_with("${GRAFANA_ADMIN_PASSWORD:-"),
        "grafana password from GRAFANA_ADMIN_PASSWORD: {password}"
    );
}

/// A Dockerfile as instructions (keyword upper-cased, arguments), continuation
/// lines joined and comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("services/Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current.trim().split_once(char::is_whitespace).unwrap_or((current.trim(), ""));
                instructions.push((keyword.to_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    assert!(current.is_empty(), "the Dockerfile ends inside a continuation");
    instructions
}

#[test]
fn dockerfile_is_multi_stage_cached_non_root_and_health_checked() {
    let instructions = dockerfile();
    let stages: Vec<usize> =
        instructions.iter().enumerate().filter(|(_, (k, _))| k == "FROM").map(|(i, _)| i).collect();
    assert!(stages.len() >= 2, "multi-stage: {} FROM", stages.len());
    let last = &instructions[*stages.last().expect("a stage")..];
    let has = |part: &[(String, String)], keyword: &str, needle: &str| {
        part.iter().any(|(k, a)| k == keyword && a.contains(needle))
    };

    assert!(has(&instructions, "ARG", "SERVICE"), "ARG SERVICE");
    assert!(
        has(&instructions, "RUN", "cargo build --release --locked -p strom-services --bin \"$SERVICE\""),
        "builds the one service binary"
    );
    // The dependency layer: cooked from the planner's recipe after the planner
    // copied the sources and before the builder copies them.
    let cook = instructions
        .iter()
        .position(|(k, a)| k == "RUN" && a.contains("cargo chef cook"))
        .expect("dependencies cooked in their own layer");
    let copies: Vec<usize> =
        instructions.iter().enumerate().filter(|(_, (k, a))| k == "COPY" && a == ". .").map(|(i, _)| i).collect();
    assert!(copies.first().is_some_and(|&first| first < cook), "the planner sees the sources");
    assert!(copies.last().is_some_and(|&last| cook < last), "the builder copies the sources after cooking");
    let cook_args = &instructions[cook].1;
    assert!(!cook_args.contains("SERVICE"), "the dependency layer is the same for every service");

    let user =
        last.iter().rev().find(|(k, _)| k == "USER").map(|(_, a)| a.as_str()).expect("USER in the runtime stage");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(!["root", "0", ""].contains(&uid), "runs as a non-root user, got {user}");
    assert!(has(last, "HEALTHCHECK", "/health"), "HEALTHCHECK on /health");
    assert!(has(last, "HEALTHCHECK", "${STROM_WEB_PORT}"), "the healthcheck follows STROM_WEB_PORT");
    assert!(has(last, "EXPOSE", "STROM_WEB_PORT"), "STROM_WEB_PORT exposed");
    assert!(has(last, "ENTRYPOINT", "strom-service"), "the service is the entrypoint");
    assert!(has(last, "RUN", "libssl3") && has(last, "RUN", "ca-certificates"), "runtime libraries");
    assert!(!has(last, "RUN", "build-essential"), "no compilers in the runtime image");

    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target"), ".dockerignore keeps target/ out of the build context");
}

/// The provisioned datasources by type: (uid, url). Exactly those of DATASOURCES.
fn provisioned_datasources() -> BTreeMap<String, (String, String)> {
    let provisioning = yaml("config/grafana/provisioning/datasources/datasource.yaml");
    let sources = provisioning["datasources"].as_sequence().expect("datasources list");
    let mut by_type = BTreeMap::new();
    for source in sources {
        let kind = source["type"].as_str().expect("datasource type").to_owned();
        let uid = source["uid"].as_str().unwrap_or_else(|| panic!("{kind}: a fixed uid")).to_owned();
        let url = source["url"].as_str().unwrap_or_else(|| panic!("{kind}: url")).to_owned();
        assert!(by_type.insert(kind.clone(), (uid, url)).is_none(), "one {kind} datasource");
    }
    let expected: BTreeMap<String, (String, String)> = DATASOURCES
        .iter()
        .map(|(kind, uid, url)| ((*kind).to_owned(), ((*uid).to_owned(), (*url).to_owned())))
        .collect();
    assert_eq!(by_type, expected, "the provisioned datasources");
    by_type
}

/// The uid of the provisioned datasource of `kind`.
fn datasource_uid(kind: &str) -> &'static str {
    DATASOURCES.iter().find(|(k, ..)| *k == kind).map(|(_, uid, _)| *uid).expect("a known datasource type")
}

fn dashboard(file: &str) -> Json {
    let path = format!("config/grafana/dashboards/{file}");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Every panel, rows' collapsed panels included.
fn panels(dashboard: &Json) -> Vec<&Json> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            all.extend(inner);
        }
    }
    all
}

/// A dashboard's queries on the datasource of `kind`, checked on the way:
/// unique panel ids, a gridPos each, every panel and query on that provisioned
/// datasource. (panel title, expression) pairs; also the number of panels that
/// query.
fn queries(file: &str, dashboard: &Json, kind: &str) -> (Vec<(String, String)>, usize) {
    let uid = datasource_uid(kind);
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string(), "{file}: dashboard uid and title");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "{file}: schemaVersion");
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    let mut queried_panels = 0;
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "{file}: panel id {id} is unique");
        assert!(panel["gridPos"].is_object(), "{file}: {title}: gridPos");
        if panel["type"] == "row" {
            continue;
        }
        queried_panels += 1;
        assert_eq!(panel["datasource"]["type"].as_str(), Some(kind), "{file}: {title}: datasource type");
        assert_eq!(panel["datasource"]["uid"].as_str(), Some(uid), "{file}: {title}: panel datasource");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        for target in targets.unwrap_or_else(|| panic!("{file}: {title}: no queries")) {
            assert_eq!(target["datasource"]["uid"].as_str(), Some(uid), "{file}: {title}: query datasource");
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{file}: {title}: query without expr"));
            queries.push((title.to_owned(), expr.to_owned()));
        }
    }
    (queries, queried_panels)
}

#[test]
fn grafana_dashboards_query_only_known_metrics_on_the_provisioned_datasource() {
    provisioned_datasources();
    let metric = regex::Regex::new(r"\bstrom_[a-zA-Z0-9_:]+").expect("regex");
    let known: BTreeSet<&str> = METRICS.into_iter().collect();
    assert_eq!(known.len(), METRICS.len(), "METRICS lists each name once");
    let mut used = BTreeSet::new();
    let mut uids = BTreeSet::new();
    for (file, fewest) in METRIC_DASHBOARDS {
        let dashboard = dashboard(file);
        assert!(uids.insert(dashboard["uid"].as_str().map(str::to_owned)), "{file}: dashboard uid is unique");
        let (queries, queried_panels) = queries(file, &dashboard, "prometheus");
        assert!(queried_panels >= fewest, "{file}: {queried_panels} panels, {fewest} at least");
        for (title, expr) in queries {
            let names: Vec<&str> = metric.find_iter(&expr).map(|m| m.as_str()).collect();
            assert!(!names.is_empty(), "{file}: {title}: {expr} queries no strom_ metric");
            for name in names {
                assert!(known.contains(name), "{file}: {title}: unknown metric {name} in {expr}");
                used.insert(name.to_owned());
            }
        }
    }
    let unused: Vec<_> = known.iter().filter(|name| !used.contains(**name)).collect();
    assert!(unused.is_empty(), "metrics no panel shows: {unused:?}");

    // Every dashboard file is one of those checked here.
    let mut files: Vec<String> = std::fs::read_dir(repo().join("config/grafana/dashboards"))
        .expect("config/grafana/dashboards")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut checked: Vec<String> =
        METRIC_DASHBOARDS.iter().map(|(f, _)| (*f).to_owned()).chain([LOG_DASHBOARD.to_owned()]).collect();
    checked.sort();
    assert_eq!(files, checked, "the dashboards provisioned are the dashboards checked");
}

#[test]
fn quake_dashboard_shows_what_the_issue_asks_for() {
    let dashboard = dashboard("quake_dashboard.json");
    let (queries, _) = queries("quake_dashboard.json", &dashboard, "prometheus");
    let all: String = queries.iter().map(|(_, expr)| format!("{expr}\n")).collect();
    for (what, needle) in [
        ("events per minute by action", "sum by (action) (rate(strom_quake_events_total"),
        ("dead letters", "strom_websocket_dead_letters_total"),
        ("rows loaded into quakes", "strom_rows_loaded_total{table=\"quakes\"}"),
        ("stale updates", "strom_quake_stale_updates_total"),
        ("SSE clients", "strom_quake_sse_clients"),
        ("age of the newest event", "strom_quake_newest_event_age_seconds"),
        ("websocket connected", "strom_websocket_connected"),
        ("reconnects", "strom_websocket_connects_total"),
        ("seconds since the last frame", "strom_websocket_seconds_since_last_frame"),
    ] {
        assert!(all.contains(needle), "quake dashboard: {what} ({needle})");
    }
    assert_eq!(dashboard["title"].as_str(), Some("Quake pipeline"));
}

/// The compose services whose logs the log dashboard's `service` variable offers.
fn quake_services(compose: &Compose) -> BTreeSet<String> {
    compose.services.keys().map(|name| name.as_str().to_owned()).filter(|name| name.starts_with("quake-")).collect()
}

#[test]
fn quake_log_dashboard_queries_loki_by_service_and_event_id() {
    let compose = compose();
    let dashboard = dashboard(LOG_DASHBOARD);
    assert_eq!(dashboard["title"].as_str(), Some("Quake pipeline logs"));
    let uids: BTreeSet<_> =
        METRIC_DASHBOARDS.iter().map(|(file, _)| self::dashboard(file)["uid"].as_str().map(str::to_owned)).collect();
    assert!(!uids.contains(&dashboard["uid"].as_str().map(str::to_owned)), "{LOG_DASHBOARD}: dashboard uid is unique");

    // The variables: the services to show, and the event id (a textbox).
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    let variable = |name: &str| {
        variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("{LOG_DASHBOARD}: no variable {name}"))
    };
    let unid = variable("unid");
    assert_eq!(unid["type"].as_str(), Some("textbox"), "unid is typed in");
    assert_eq!(unid["query"].as_str(), Some(""), "unid is empty at first: every line");
    let service = variable("service");
    let offered: BTreeSet<String> =
        service["query"].as_str().expect("service: custom values").split(',').map(|s| s.trim().to_owned()).collect();
    assert_eq!(offered, quake_services(&compose), "the service variable offers the quake services");
    assert_eq!(service["includeAll"].as_bool(), Some(true), "service: All");
    let all = regex::Regex::new(&format!("^(?:{})$", service["allValue"].as_str().expect("service: allValue")))
        .expect("allValue is a regex");
    assert!(offered.iter().all(|s| all.is_match(s)), "All selects every quake service");
    assert!(!all.is_match("db-loader") && !all.is_match("kafka"), "All selects the quake services only");

    // LogQL on the provisioned Loki: every query selects streams by the label
    // service (as Alloy sets it), by the variable or by a quake service.
    let (queries, queried_panels) = queries(LOG_DASHBOARD, &dashboard, "loki");
    assert!(queried_panels >= 2, "{LOG_DASHBOARD}: a logs panel and the source's, at least");
    let selector = regex::Regex::new(r#"\{service(=~|=)"([^"]+)"[^}]*\}"#).expect("regex");
    for (title, expr) in &queries {
        let found: Vec<_> = selector.captures_iter(expr).collect();
        assert!(!found.is_empty(), "{title}: {expr} selects no streams by service");
        for selected in found {
            let value = &selected[2];
            if value == "$service" {
                assert_eq!(&selected[1], "=~", "{title}: $service may be several (a regex)");
            } else {
                assert!(offered.contains(value), "{title}: {value} is not a quake service");
            }
        }
        assert!(!expr.contains("strom_"), "{title}: a LogQL query, not PromQL: {expr}");
    }
    let panel_types: Vec<&str> = panels(&dashboard).iter().filter_map(|p| p["type"].as_str()).collect();
    assert!(panel_types.contains(&"logs"), "a logs panel");

    // The producer's lines filtered by event id: unid is not a label (Alloy
    // keeps it out of them), it is read from the JSON line.
    let by_id: Vec<_> = queries.iter().filter(|(_, expr)| expr.contains("$unid")).collect();
    assert!(
        by_id.iter().any(|(_, expr)| expr.starts_with("{service=\"quake-source\"}")
            && expr.contains("| json")
            && expr.contains("fields_unid=~\"$unid")),
        "a query of quake-source's lines by event id: {by_id:?}"
    );
    for (title, expr) in &queries {
        assert!(!expr.contains("unid=\"$unid\"}"), "{title}: unid is no stream label: {expr}");
    }
}

#[test]
fn grafana_provisioning_matches_the_compose_mounts() {
    let compose = compose();
    let sources = provisioned_datasources();
    assert_eq!(sources["prometheus"].1, "http://prometheus:9090", "the datasource is the compose Prometheus");
    assert_eq!(sources["loki"].1, format!("http://loki:{}", loki_port()), "the datasource is the compose Loki");
    assert!(compose.services.contains_key("loki") && compose.services.contains_key("prometheus"));

    let providers = yaml("config/grafana/provisioning/dashboards/default.yaml");
    let provider = &providers["providers"][0];
    assert_eq!(provider["type"].as_str(), Some("file"));
    let path = provider["options"]["path"].as_str().expect("dashboard provider path");
    assert_eq!(
        path,
        mounted_at(&compose, "grafana", "config/grafana/dashboards"),
        "provider reads the mounted dashboards"
    );
    assert_eq!(mounted_at(&compose, "grafana", "config/grafana/provisioning"), "/etc/grafana/provisioning");
}

#[test]
fn prometheus_scrapes_every_service_at_its_port() {
    let config = yaml("config/prometheus/prometheus.yaml");
    assert!(config["global"]["scrape_interval"].is_string(), "global scrape_interval");
    let jobs = config["scrape_configs"].as_sequence().expect("scrape_configs");
    let mut targets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for job in jobs {
        let name = job["job_name"].as_str().expect("job_name").to_owned();
        assert!(!targets.contains_key(&name), "job {name} appears once");
        let list = targets.entry(name).or_default();
        for config in job["static_configs"].as_sequence().into_iter().flatten() {
            for target in config["targets"].as_sequence().into_iter().flatten() {
                list.push(target.as_str().expect("target").to_owned());
            }
        }
    }
    // One job per binary (the dashboards' `job`), every compose service of it
    // a target (the replicas of quake-map: one `instance` each).
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, binary, port) in SERVICES {
        expected.entry(binary.to_owned()).or_default().push(format!("{name}:{port}"));
    }
    for (job, wanted) in &expected {
        assert_eq!(targets.get(job), Some(wanted), "job {job} scrapes {wanted:?}");
    }
    let compose = compose();
    let path = mounted_at(&compose, "prometheus", "config/prometheus/prometheus.yaml");
    let command = format!("{:?}", service(&compose, "prometheus").command);
    assert!(command.contains(&format!("--config.file={path}")), "prometheus reads the mounted config: {command}");
}

/// The PromQL expressions of the dashboards on Prometheus, Grafana's
/// `$__rate_interval` replaced.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut all = Vec::new();
    for (file, _) in METRIC_DASHBOARDS {
        for (title, expr) in queries(file, &dashboard(file), "prometheus").0 {
            all.push((format!("{file}: {title}"), expr.replace("$__rate_interval", "1m")));
        }
    }
    all
}

/// Runs promtool (Debian package `prometheus`; scripts/test-env.sh installs it).
fn promtool(args: &[&str], path: &Path) -> std::process::Output {
    Command::new("promtool").args(args).arg(path).output().unwrap_or_else(|e| {
        panic!("promtool could not run ({e}): install the Debian package prometheus (scripts/test-env.sh up does)")
    })
}

#[test]
fn promtool_accepts_the_prometheus_config_and_the_dashboard_queries() {
    let config = repo().join("config/prometheus/prometheus.yaml");
    let out = promtool(&["check", "config", "--syntax-only"], &config);
    let log = |out: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    assert!(out.status.success(), "promtool check config:\n{}", log(&out));

    // Each query as a recording rule: promtool parses its PromQL.
    let rules: Vec<Json> = dashboard_queries()
        .into_iter()
        .enumerate()
        .map(|(i, (title, expr))| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr, "labels": {"panel": title}}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = std::env::temp_dir().join(format!("strom-deployment-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("dashboard-rules.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&file).expect("JSON")).expect("write rules");
    let out = promtool(&["check", "rules"], &path);
    // And promtool does reject a query that does not parse.
    let broken = serde_json::json!({"groups": [{"name": "broken", "rules": [{"record": "broken:query", "expr": "sum(rate(strom_x[1m])"}]}]});
    let broken_path = dir.join("broken-rules.yaml");
    std::fs::write(&broken_path, serde_json::to_string_pretty(&broken).expect("JSON")).expect("write rules");
    let rejected = promtool(&["check", "rules"], &broken_path);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "the dashboards' PromQL does not parse:\n{}", log(&out));
    assert!(!rejected.status.success(), "promtool rejects broken PromQL:\n{}", log(&rejected));
}

// ---- the load balancer (config/nginx/nginx.conf) ----------------------------

/// A directive of an nginx configuration: its name, its arguments, its block.
#[derive(Debug)]
struct Directive {
    name: String,
    args: Vec<String>,
    block: Vec<Directive>,
}

impl Directive {
    fn all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Directive> + use<'a> {
        let name = name.to_owned();
        self.block.iter().filter(move |d| d.name == name)
    }

    fn one(&self, name: &str) -> &Directive {
        let mut found = self.all(name);
        let first = found.next().unwrap_or_else(|| panic!("no {name} in {} {:?}", self.name, self.args));
        assert!(found.next().is_none(), "{name} appears once in {} {:?}", self.name, self.args);
        first
    }

    /// The arguments of the one `name` directive, space-separated.
    fn value(&self, name: &str) -> String {
        self.one(name).args.join(" ")
    }

    /// The `location` block whose arguments are `args`.
    fn location(&self, args: &[&str]) -> &Directive {
        self.all("location").find(|l| l.args == args).unwrap_or_else(|| panic!("no location {args:?}"))
    }
}

/// Parses nginx's configuration syntax: words and quoted strings, `;` ending a
/// directive, `{ }` a block, `#` a comment.
fn nginx_config(text: &str) -> Directive {
    fn tokens(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(&c) = chars.peek() {
            match c {
                '#' => while chars.next_if(|&c| c != '\n').is_some() {},
                c if c.is_whitespace() => {
                    chars.next();
                }
                '{' | '}' | ';' => {
                    out.push(c.to_string());
                    chars.next();
                }
                quote @ ('\'' | '"') => {
                    chars.next();
                    let mut word = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => word.extend(chars.next()),
                            c if c == quote => break,
                            c => word.push(c),
                        }
                    }
                    out.push(format!("\u{1}{word}"));
                }
                _ => {
                    let mut word = String::new();
                    while let Some(c) = chars.next_if(|c| !c.is_whitespace() && !"{};".contains(*c)) {
                        word.push(c);
                    }
                    out.push(word);
                }
            }
        }
        out
    }
    fn block(tokens: &mut std::vec::IntoIter<String>, name: String, args: Vec<String>) -> Directive {
        let mut directives = Vec::new();
        let mut words: Vec<String> = Vec::new();
        while let Some(token) = tokens.next() {
            match token.as_str() {
                ";" => {
                    let mut words = std::mem::take(&mut words).into_iter();
                    let name = words.next().expect("a directive before ;");
                    directives.push(Directive { name, args: words.collect(), block: Vec::new() });
                }
                "{" => {
                    let mut words = std::mem::take(&mut words).into_iter();
                    let name = words.next().expect("a directive before {");
                    directives.push(block(tokens, name, words.collect()));
                }
                "}" => break,
                _ => words.push(token.trim_start_matches('\u{1}').to_owned()),
            }
        }
        assert!(words.is_empty(), "directive without ; at the end of {name}: {words:?}");
        Directive { name, args, block: directives }
    }
    block(&mut tokens(text).into_iter(), "main".into(), Vec::new())
}

/// Seconds in an nginx time (`60s`, `2m`, `1h`, `500ms`, or seconds).
fn nginx_seconds(time: &str) -> f64 {
    let (number, unit) = time.split_at(time.find(|c: char| !c.is_ascii_digit()).unwrap_or(time.len()));
    let n: f64 = number.parse().unwrap_or_else(|_| panic!("not an nginx time: {time}"));
    n * match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => panic!("unit {other} in {time}"),
    }
}

#[test]
fn load_balancer_round_robins_over_the_map_replicas_and_streams_events_unbuffered() {
    let compose = compose();
    let config = nginx_config(&read("config/nginx/nginx.conf"));
    assert_eq!(mounted_at(&compose, "quake-lb", "config/nginx/nginx.conf"), "/etc/nginx/nginx.conf");
    let http = config.one("http");

    // The upstreams: the map replicas, at their port, with passive health.
    let upstream = http.one("upstream");
    assert!(upstream.all("zone").count() == 1, "the replicas' state is shared by the worker processes");
    let methods = ["least_conn", "ip_hash", "hash", "random", "least_time"];
    assert!(methods.iter().all(|m| upstream.all(m).count() == 0), "round-robin, nginx's default");
    let mut servers = Vec::new();
    for server in upstream.all("server") {
        let address = server.args[0].clone();
        let parameters: BTreeMap<&str, &str> = server.args[1..].iter().filter_map(|a| a.split_once('=')).collect();
        let fails: u32 =
            parameters.get("max_fails").unwrap_or_else(|| panic!("{address}: max_fails")).parse().expect("n");
        assert!(fails >= 1, "{address}: max_fails counts failures");
        let timeout = parameters.get("fail_timeout").unwrap_or_else(|| panic!("{address}: fail_timeout"));
        assert!(nginx_seconds(timeout) > 0.0, "{address}: fail_timeout");
        servers.push(address);
    }
    let port = SERVICES.iter().find(|(_, binary, _)| *binary == "quake-map").map(|(_, _, p)| *p).expect("quake-map");
    let replicas: Vec<String> = MAP_REPLICAS.iter().map(|name| format!("{name}:{port}")).collect();
    assert_eq!(servers, replicas, "the upstream servers are the map replicas");

    // One server, on the port compose publishes, proxying to the upstream.
    let server = http.one("server");
    let published = PUBLISHED.iter().find(|(name, ..)| *name == "quake-lb").map(|(_, _, p)| *p).expect("quake-lb");
    assert_eq!(server.value("listen"), published.to_string(), "nginx listens on the published port");
    let upstream_url = format!("http://{}", upstream.args[0]);
    assert_eq!(server.value("proxy_http_version"), "1.1", "HTTP/1.1 to the replicas (keepalive, streaming)");
    let headers: Vec<String> = server.all("proxy_set_header").map(|d| d.args.join(" ")).collect();
    assert!(headers.iter().any(|h| h == "Connection "), "Connection '' to the replicas: {headers:?}");
    let next = server.value("proxy_next_upstream");
    for condition in ["error", "timeout", "http_502", "http_503"] {
        assert!(next.split(' ').any(|c| c == condition), "proxy_next_upstream {condition}: {next}");
    }
    assert!(server.all("add_header").any(|h| h.args[0] == "X-Upstream"), "which replica answered");
    let locations: Vec<&Directive> = server.all("location").collect();
    for location in &locations {
        for inherited in ["proxy_set_header", "add_header", "proxy_next_upstream", "proxy_http_version"] {
            assert_eq!(
                location.all(inherited).count(),
                0,
                "location {:?} would drop the server's {inherited}",
                location.args
            );
        }
    }

    // The map page and API; the event stream unbuffered, kept open longer than
    // the replicas' keepalive comments (every 15 s) are apart.
    assert_eq!(server.location(&["/"]).value("proxy_pass"), upstream_url);
    let stream = server.location(&["=", "/api/quakes/stream"]);
    assert_eq!(stream.value("proxy_pass"), upstream_url);
    assert_eq!(stream.value("proxy_buffering"), "off", "events pass as they are written");
    assert_eq!(stream.value("proxy_cache"), "off");
    let read_timeout = nginx_seconds(&stream.value("proxy_read_timeout"));
    assert!(read_timeout > 15.0, "the stream outlives the 15 s between keepalives: {read_timeout} s");

    // Its own health, answered by nginx, is what its healthcheck asks.
    let health = server.location(&["=", "/lb-health"]);
    assert_eq!(health.one("return").args[0], "200", "/lb-health answers 200 itself");
    let check = healthcheck_command("quake-lb", service(&compose, "quake-lb"));
    assert!(check.contains(&format!("127.0.0.1:{published}/lb-health")), "quake-lb healthcheck: {check}");
    // The access log is JSON, like the services' lines.
    assert!(http.all("log_format").any(|f| f.args.get(1).map(String::as_str) == Some("escape=json")));
}

// ---- logs: Loki and Alloy ---------------------------------------------------

/// The port Loki serves HTTP on (config/loki/config.yaml).
fn loki_port() -> u64 {
    yaml("config/loki/config.yaml")["server"]["http_listen_port"].as_u64().expect("server.http_listen_port")
}

#[test]
fn loki_keeps_its_data_on_its_volume_with_retention() {
    let compose = compose();
    let config = yaml("config/loki/config.yaml");
    let loki = service(&compose, "loki");
    let path = mounted_at(&compose, "loki", "config/loki/config.yaml");
    let command = command_args("loki", loki);
    assert!(command.contains(&format!("-config.file={path}")), "loki reads the mounted config: {command:?}");

    assert_eq!(config["auth_enabled"].as_bool(), Some(false), "one tenant, no authentication");
    let port = loki_port();
    let check = healthcheck_command("loki", loki);
    assert!(check.contains(&format!("127.0.0.1:{port}/ready")), "loki healthcheck asks /ready: {check}");

    // Everything on the named volume.
    let volume = volume_target(&compose, "loki").expect("loki has a named volume");
    let on_volume = |what: &str, path: Option<&str>| {
        let path = path.unwrap_or_else(|| panic!("loki: {what}"));
        assert!(Path::new(path).starts_with(&volume), "loki: {what} {path} lies on {volume}");
    };
    let common = &config["common"];
    on_volume("common.path_prefix", common["path_prefix"].as_str());
    on_volume("chunks_directory", common["storage"]["filesystem"]["chunks_directory"].as_str());
    on_volume("rules_directory", common["storage"]["filesystem"]["rules_directory"].as_str());
    on_volume("compactor.working_directory", config["compactor"]["working_directory"].as_str());
    assert_eq!(common["replication_factor"].as_u64(), Some(1), "a single instance");

    let schemas = config["schema_config"]["configs"].as_sequence().expect("schema_config.configs");
    let schema = schemas.last().expect("a schema");
    assert_eq!(schema["store"].as_str(), Some("tsdb"));
    assert_eq!(schema["object_store"].as_str(), Some("filesystem"));
    assert_eq!(schema["schema"].as_str(), Some("v13"), "v13: structured metadata");

    // Retention: the compactor deletes what is older than retention_period.
    let compactor = &config["compactor"];
    assert_eq!(compactor["retention_enabled"].as_bool(), Some(true), "retention on");
    assert_eq!(compactor["delete_request_store"].as_str(), Some("filesystem"), "needed with retention");
    let retention = config["limits_config"]["retention_period"].as_str().expect("limits_config.retention_period");
    let hours: u64 = retention.strip_suffix('h').and_then(|h| h.parse().ok()).expect("retention in hours");
    assert!((24..=24 * 90).contains(&hours), "retention of days, not forever: {retention}");
    assert_eq!(config["limits_config"]["allow_structured_metadata"].as_bool(), Some(true));
}

/// The components an Alloy configuration declares (`kind "label" {`), and the
/// references to components in its expressions (`kind.label.export`).
fn alloy_components(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let code: String = text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
    let declared = regex::Regex::new(r#"(?m)^\s*([a-z_]+(?:\.[a-z_]+)+)\s+"([a-z0-9_]+)"\s*\{"#).expect("regex");
    let components: BTreeSet<String> = declared.captures_iter(&code).map(|c| format!("{}.{}", &c[1], &c[2])).collect();
    let reference =
        regex::Regex::new(r"=\s*\[?\s*((?:discovery|loki|prometheus)\.[a-z_]+\.[a-z0-9_]+)\.[a-z_]+").expect("regex");
    let references = reference.captures_iter(&code).map(|c| c[1].to_owned()).collect();
    assert_eq!(code.matches('{').count(), code.matches('}').count(), "config.alloy: braces balance");
    (components, references)
}

#[test]
fn alloy_ships_the_compose_containers_logs_to_loki_labelled_by_service() {
    let compose = compose();
    let text = read("config/alloy/config.alloy");
    let alloy = service(&compose, "alloy");
    let path = mounted_at(&compose, "alloy", "config/alloy/config.alloy");
    let command = command_args("alloy", alloy);
    assert_eq!(command.first().map(String::as_str), Some("run"), "alloy run <config>: {command:?}");
    assert!(command.contains(&path), "alloy runs the mounted config: {command:?}");
    let storage = command.iter().find_map(|a| a.strip_prefix("--storage.path=")).expect("--storage.path");
    let volume = volume_target(&compose, "alloy").expect("alloy keeps its positions on a named volume");
    assert!(Path::new(storage).starts_with(&volume), "--storage.path {storage} lies on {volume}");
    let listen = command.iter().find_map(|a| a.strip_prefix("--server.http.listen-addr=")).expect("listen address");
    let check = healthcheck_command("alloy", alloy);
    let (host, port) = listen.rsplit_once(':').expect("host:port");
    assert!(check.contains(&format!("{host}/{port}")) && check.contains("/-/ready"), "alloy healthcheck: {check}");

    let (components, references) = alloy_components(&text);
    for needed in ["discovery.docker", "discovery.relabel", "loki.source.docker", "loki.process", "loki.write"] {
        assert!(components.iter().any(|c| c.starts_with(&format!("{needed}."))), "config.alloy: a {needed}");
    }
    for reference in &references {
        assert!(components.contains(reference), "config.alloy refers to {reference}, which it does not declare");
    }
    assert!(references.len() >= 4, "the components are wired together: {references:?}");

    // The Docker daemon through the mounted socket.
    let socket = regex::Regex::new(&format!(r#"host\s*=\s*"unix://{DOCKER_SOCKET}""#)).expect("regex");
    assert_eq!(socket.find_iter(&text).count(), 2, "discovery and logs through the mounted socket");
    // service and container labels from compose's container labels.
    let relabel = regex::Regex::new(
        r#"rule \{\s*source_labels = \["__meta_docker_container_label_com_docker_compose_service"\]\s*target_label\s*= "service""#,
    )
    .expect("regex");
    assert!(relabel.is_match(&text), "the compose service becomes the label service");
    assert!(
        text.contains(r#"source_labels = ["__meta_docker_container_name"]"#)
            && text.contains(r#"target_label  = "container""#)
    );
    // JSON lines: level as a label; unid never a label.
    assert!(text.contains("stage.json"), "the JSON lines are parsed");
    // A stage.labels block's values end at the first closing brace.
    let labels: Vec<&str> = text
        .split("stage.labels")
        .skip(1)
        .map(|block| block.split_once('}').map_or(block, |(values, _)| values))
        .collect();
    assert!(labels.iter().any(|values| values.contains("level")), "level becomes a label");
    for values in &labels {
        assert!(!values.contains("unid"), "unid is not a label (one value per event): {values}");
    }
    assert!(text.contains("\"fields.unid\""), "quake-source's unid is read from the tracing JSON's fields");
    // Pushed to the compose Loki.
    assert!(
        text.contains(&format!("url = \"http://loki:{}/loki/api/v1/push\"", loki_port())),
        "alloy pushes to Loki's push API"
    );
}

#[test]
fn mosquitto_listens_anonymously_and_persists_sessions_on_its_volume() {
    let conf = read("config/mosquitto/mosquitto.conf");
    let settings: BTreeMap<&str, &str> = conf
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(k, v)| (k, v.trim()))
        .collect();
    assert_eq!(settings.get("listener"), Some(&"1883"));
    assert_eq!(settings.get("allow_anonymous"), Some(&"true"));
    assert_eq!(settings.get("persistence"), Some(&"true"));
    let location = settings.get("persistence_location").expect("persistence_location");

    let compose = compose();
    assert_eq!(
        mounted_at(&compose, "mosquitto", "config/mosquitto/mosquitto.conf"),
        "/mosquitto/config/mosquitto.conf"
    );
    let volume = volume_target(&compose, "mosquitto");
    assert_eq!(volume.as_deref(), Some(location.trim_end_matches('/')), "mosquitto persists to its named volume");
}
