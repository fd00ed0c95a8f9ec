//! Static checks of the deployment, for a machine without a Docker engine:
//! `docker-compose.yaml` (parsed with `compose_spec` and validated against the
//! Compose JSON schema), `services/Dockerfile`, the Prometheus configuration,
//! the Grafana provisioning and dashboard, and the Mosquitto configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use compose_spec::service::healthcheck::Test;
use compose_spec::service::volumes::{Mount, into_long_iter};
use compose_spec::service::{Build, Condition, Healthcheck, Restart, ports};
use compose_spec::{Compose, ListOrMap, Service, ShortOrLong};
use serde_json::Value as Json;

/// The services of the sensor pipeline and their HTTP ports (DESIGN.md).
const SERVICES: [(&str, u16); 6] = [
    ("sensor-simulator", 7001),
    ("collection", 7002),
    ("processing", 7003),
    ("aggregation", 7004),
    ("db-loader", 7005),
    ("api-gateway", 8007),
];

/// The infrastructure and the image each must run.
const INFRASTRUCTURE: [(&str, &str); 5] = [
    ("kafka", "apache/kafka"),
    ("mosquitto", "eclipse-mosquitto"),
    ("postgres", "postgres"),
    ("prometheus", "prom/prometheus"),
    ("grafana", "grafana/grafana"),
];

/// The only ports published to the host: what a user opens.
const PUBLISHED: [(&str, u16); 3] = [("api-gateway", 8007), ("grafana", 3000), ("prometheus", 9090)];

/// Every metric the dashboard may query: the library's and the services' own.
const METRICS: [&str; 11] = [
    "strom_events_received_total",
    "strom_events_processed_total",
    "strom_messages_produced_total",
    "strom_dead_letters_total",
    "strom_consumer_lag",
    "strom_processing_latency_seconds_bucket",
    "strom_mqtt_messages_received_total",
    "strom_rows_loaded_total",
    "strom_sensor_to_db_latency_seconds_bucket",
    "strom_api_requests_total",
    "strom_api_latest_value_age_seconds",
];

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

/// A mount of a service: a bind mount of a host path, or a volume.
struct Mounted {
    /// The host path as written for a bind mount, the volume's name for a
    /// named volume, nothing for an anonymous one.
    source: Option<String>,
    /// The path in the container.
    target: String,
    bind: bool,
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
            },
            Mount::Volume(volume) => Mounted {
                source: volume.source.map(|s| s.as_str().to_owned()),
                target: volume.common.target.as_path().display().to_string(),
                bind: false,
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
    for (name, port) in SERVICES {
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
        assert_eq!(args.get("SERVICE").map(String::as_str), Some(name), "{name}: build arg SERVICE");
        assert_eq!(args.get("STROM_WEB_PORT"), Some(&port.to_string()), "{name}: build arg STROM_WEB_PORT");

        let env = environment(service);
        assert_eq!(env.get("STROM_WEB_PORT"), Some(&port.to_string()), "{name}: STROM_WEB_PORT");
        assert_eq!(env.get("STROM_BROKER").map(String::as_str), Some("kafka://kafka:9092"), "{name}: STROM_BROKER");

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
    for name in ["db-loader", "api-gateway"] {
        let env = environment(service(&compose, name));
        let url = env.get("DATABASE_URL").unwrap_or_else(|| panic!("{name}: DATABASE_URL"));
        assert!(url.starts_with("postgres://postgres:"), "{name}: DATABASE_URL {url}");
        assert!(url.ends_with("@postgres:5432/strom"), "{name}: DATABASE_URL {url}");
        assert!(url.contains("${POSTGRES_PASSWORD"), "{name}: the password comes from the environment");
    }
    let postgres = environment(service(&compose, "postgres"));
    assert_eq!(postgres.get("POSTGRES_DB").map(String::as_str), Some("strom"));

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
        ("grafana", &["prometheus"]),
    ];
    for (name, targets) in needs {
        let ShortOrLong::Long(deps) = &service(&compose, name).depends_on else { panic!("{name}: depends_on") };
        for target in targets {
            assert!(deps.contains_key(*target), "{name} waits for {target}");
        }
    }
}

#[test]
fn only_grafana_prometheus_and_the_api_are_published() {
    let compose = compose();
    let mut published = BTreeSet::new();
    for (name, service) in &compose.services {
        for port in ports::into_long_iter(service.ports.clone()) {
            let host = port.published.map(|p| p.to_string()).unwrap_or_default();
            published.insert((name.as_str().to_owned(), host, port.target));
        }
    }
    let expected: BTreeSet<_> =
        PUBLISHED.iter().map(|(name, port)| ((*name).to_owned(), port.to_string(), *port)).collect();
    assert_eq!(published, expected);
}

#[test]
fn mounted_config_files_exist_in_the_repository() {
    let compose = compose();
    let mut mounted = BTreeSet::new();
    for (name, service) in &compose.services {
        for Mounted { source, target, bind } in mounts(service) {
            if !bind {
                continue;
            }
            let source = source.expect("a bind has a source");
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

fn provisioned_datasource() -> (String, String) {
    let provisioning = yaml("config/grafana/provisioning/datasources/datasource.yaml");
    let sources = provisioning["datasources"].as_sequence().expect("datasources list");
    assert_eq!(sources.len(), 1, "one datasource");
    let source = &sources[0];
    assert_eq!(source["type"].as_str(), Some("prometheus"));
    let uid = source["uid"].as_str().expect("datasource uid").to_owned();
    let url = source["url"].as_str().expect("datasource url").to_owned();
    (uid, url)
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

#[test]
fn grafana_dashboard_queries_only_known_metrics_on_the_provisioned_datasource() {
    let dashboard: Json =
        serde_json::from_str(&read("config/grafana/dashboards/services_dashboard.json")).expect("dashboard is JSON");
    let (uid, _) = provisioned_datasource();
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string(), "dashboard uid and title");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");

    let metric = regex::Regex::new(r"\bstrom_[a-zA-Z0-9_:]+").expect("regex");
    let known: BTreeSet<&str> = METRICS.into_iter().collect();
    let mut used = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut queried_panels = 0;
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} is unique");
        assert!(panel["gridPos"].is_object(), "{title}: gridPos");
        if panel["type"] == "row" {
            continue;
        }
        queried_panels += 1;
        assert_eq!(panel["datasource"]["uid"].as_str(), Some(uid.as_str()), "{title}: panel datasource");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        for target in targets.unwrap_or_else(|| panic!("{title}: no queries")) {
            assert_eq!(target["datasource"]["uid"].as_str(), Some(uid.as_str()), "{title}: query datasource");
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{title}: query without expr"));
            let names: Vec<&str> = metric.find_iter(expr).map(|m| m.as_str()).collect();
            assert!(!names.is_empty(), "{title}: {expr} queries no strom_ metric");
            for name in names {
                assert!(known.contains(name), "{title}: unknown metric {name} in {expr}");
                used.insert(name);
            }
        }
    }
    assert!(queried_panels >= 9, "the seed's panels and more: {queried_panels}");
    let unused: Vec<_> = known.difference(&used).collect();
    assert!(unused.is_empty(), "metrics no panel shows: {unused:?}");
}

#[test]
fn grafana_provisioning_matches_the_compose_mounts() {
    let compose = compose();
    let (_, url) = provisioned_datasource();
    assert_eq!(url, "http://prometheus:9090", "the datasource is the compose Prometheus");

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
    for (name, port) in SERVICES {
        assert_eq!(targets.get(name), Some(&vec![format!("{name}:{port}")]), "job {name} scrapes {name}:{port}");
    }
    let compose = compose();
    let path = mounted_at(&compose, "prometheus", "config/prometheus/prometheus.yaml");
    let command = format!("{:?}", service(&compose, "prometheus").command);
    assert!(command.contains(&format!("--config.file={path}")), "prometheus reads the mounted config: {command}");
}

/// The dashboard's PromQL expressions, Grafana's `$__rate_interval` replaced.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Json =
        serde_json::from_str(&read("config/grafana/dashboards/services_dashboard.json")).expect("dashboard is JSON");
    let mut queries = Vec::new();
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            let expr = target["expr"].as_str().unwrap_or_default().replace("$__rate_interval", "1m");
            queries.push((title, expr));
        }
    }
    queries
}

/// Runs promtool when it is installed (Debian package `prometheus`).
fn promtool(args: &[&str], path: &Path) -> Option<std::process::Output> {
    match Command::new("promtool").args(args).arg(path).output() {
        Ok(out) => Some(out),
        Err(e) => {
            eprintln!("skipped: promtool not found ({e}); the Debian package prometheus provides it");
            None
        }
    }
}

#[test]
fn promtool_accepts_the_prometheus_config_and_the_dashboard_queries() {
    let config = repo().join("config/prometheus/prometheus.yaml");
    let Some(out) = promtool(&["check", "config", "--syntax-only"], &config) else { return };
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
    let out = promtool(&["check", "rules"], &path).expect("promtool ran a moment ago");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "the dashboard's PromQL does not parse:\n{}", log(&out));
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
