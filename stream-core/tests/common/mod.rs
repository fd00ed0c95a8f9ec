//! What the transport-generic tests share: the transport under test and the
//! macro that runs a test on each transport.

use std::time::Duration;

use stream_core::App;
use stream_core::testing::TestDriver;

/// How long a test waits for something before failing.
#[allow(dead_code)]
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// The transport a test runs on.
#[derive(Debug, Clone)]
pub(crate) enum Env {
    /// A private in-process broker.
    Memory,
    /// A real Kafka-protocol broker (`kafka://host:port`).
    Kafka(String),
}

impl Env {
    /// The broker named by `STROM_TEST_KAFKA` (default `127.0.0.1:9092`),
    /// which must be running: `scripts/test-env.sh up` starts one.
    #[allow(dead_code)]
    pub(crate) fn kafka() -> Env {
        let addr = std::env::var("STROM_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
        if std::net::TcpStream::connect_timeout(
            &addr.parse().unwrap_or_else(|e| panic!("STROM_TEST_KAFKA={addr:?}: {e}")),
            Duration::from_secs(2),
        )
        .is_err()
        {
            panic!("no Kafka-protocol broker answers on {addr}: start one with `scripts/test-env.sh up`");
        }
        Env::Kafka(format!("kafka://{addr}"))
    }

    /// A test app on this transport, with topics and group of its own.
    #[allow(dead_code)]
    pub(crate) fn app(&self, id: &str) -> App {
        match self {
            Env::Memory => TestDriver::app(id),
            Env::Kafka(url) => TestDriver::app_on(url, id),
        }
    }

    /// A second app on the same broker and topics as `app` (a restarted
    /// worker, or another worker of the group).
    #[allow(dead_code)]
    pub(crate) fn same_as(app: &App) -> stream_core::AppBuilder {
        let c = app.config();
        App::builder(c.id.clone())
            .broker(c.broker.clone())
            .topic_prefix(c.topic_prefix.clone())
            .commit_interval(c.commit_interval)
            .without_web()
    }
}

/// Runs each named `async fn(Env)` as a test on the memory transport and, with
/// the `kafka` feature, on the real broker.
#[macro_export]
macro_rules! on_every_transport {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Env::Memory).await
                }
            )*
        }
        #[cfg(feature = "kafka")]
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Env::kafka()).await
                }
            )*
        }
    };
}
