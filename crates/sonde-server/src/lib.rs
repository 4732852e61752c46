//! Sonde's network services over one [`Storage`]: the `sonde.v1.Ingest` and OTLP
//! `MetricsService` gRPC services and the HTTP endpoints (`/healthz`, `/readyz`,
//! `/api/v1/admin/flush`, `/metrics`, `/api/v1/write`, `/v1/metrics`,
//! `/api/v1/metadata`).
//!
//! Design decision: storage is synchronous (its WAL thread does group commit), so
//! every storage call runs on tokio's blocking pool; the async side never blocks.
//! Errors become protocol statuses in exactly one place per protocol
//! ([`grpc::status`], [`http::error_response`]): bad input names the field and the
//! limit; internal faults are logged in full and reported opaquely.

pub mod calls;
pub mod flight;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod metadata;
pub mod metrics;
pub mod otlp;
pub mod pricing;
pub mod prom_api;
pub mod remote_write;
pub mod rules;
pub mod series_cache;
pub mod sql;

use std::net::SocketAddr;
use std::sync::Arc;

use sonde_storage::Storage;
use tokio::net::TcpListener;

pub use metrics::Metrics;

/// The tenant used when authentication is off.
pub const DEFAULT_TENANT: &str = "default";

/// Bearer tokens, each mapped to a tenant. With none configured every request
/// belongs to [`DEFAULT_TENANT`]. The tenant of stored data comes only from the
/// token, never from the payload.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    tokens: std::collections::HashMap<String, String>,
}

/// A request without a valid bearer token while authentication is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unauthenticated;

impl Auth {
    /// From `TOKEN=TENANT` pairs; errors name the bad entry.
    pub fn from_pairs<S: AsRef<str>>(pairs: &[S]) -> std::result::Result<Self, String> {
        let mut tokens = std::collections::HashMap::new();
        for p in pairs {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            let (token, tenant) = p
                .split_once('=')
                .ok_or_else(|| format!("auth token {p:?}: expected TOKEN=TENANT"))?;
            sonde_types::validate_tenant(tenant).map_err(|e| format!("auth token for {e}"))?;
            if token.len() < 8 {
                return Err(format!(
                    "auth token for tenant {tenant:?}: at least 8 characters, got {}",
                    token.len()
                ));
            }
            tokens.insert(token.to_string(), tenant.to_string());
        }
        Ok(Auth { tokens })
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The tenant for an `Authorization` header value.
    pub fn tenant(
        &self,
        authorization: Option<&str>,
    ) -> std::result::Result<String, Unauthenticated> {
        if self.tokens.is_empty() {
            return Ok(DEFAULT_TENANT.to_string());
        }
        authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .and_then(|t| self.tokens.get(t.trim()))
            .cloned()
            .ok_or(Unauthenticated)
    }
}

/// What the services share.
#[derive(Debug)]
pub struct AppState {
    pub storage: Arc<Storage>,
    pub metrics: Metrics,
    /// Prices for computing the cost of LLM calls that arrive without one.
    pub prices: Vec<pricing::Price>,
    pub auth: Auth,
    /// Metric types, units, help and original OTLP names.
    pub metadata: metadata::MetadataStore,
    /// SQL over the storage (DataFusion).
    pub query: Arc<sonde_query::QueryEngine>,
    /// PromQL limits and defaults.
    pub promql: sonde_promql::PromConfig,
    /// Alerting and recording rules, when configured (set once the runtime runs).
    pub rules: std::sync::OnceLock<sonde_rules::Manager>,
    /// Label sets remote_write already decoded, by their wire bytes.
    pub series_cache: series_cache::SeriesCache,
}

/// Failures starting or running the servers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// HTTP/2 flow-control window per gRPC stream, in bytes.
pub const GRPC_STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 flow-control window per gRPC connection, in bytes.
pub const GRPC_CONNECTION_WINDOW: u32 = 16 << 20;

/// Bound listeners, so callers learn the real ports before serving (port 0 works).
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(grpc: &str, http: &str) -> Result<Self> {
        let bind = |addr: String| async move {
            TcpListener::bind(&addr)
                .await
                .map_err(|source| Error::Bind { addr, source })
        };
        Ok(Listeners {
            grpc: bind(grpc.to_string()).await?,
            http: bind(http.to_string()).await?,
        })
    }
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.local_addr().ok()
    }
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.local_addr().ok()
    }
}

/// Serves gRPC and HTTP until `shutdown` completes, then stops accepting, lets
/// in-flight requests finish, and returns. The caller closes the storage afterwards
/// (which makes the WAL durable).
pub async fn serve(
    state: Arc<AppState>,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut grpc_stop = tx.subscribe();
    let mut http_stop = tx.subscribe();
    // HTTP/2's default 64 KiB flow-control window makes a multi-megabyte write wait
    // for a window update every 64 KiB; large windows let a batch arrive in one go.
    let grpc = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(GRPC_STREAM_WINDOW))
        .initial_connection_window_size(Some(GRPC_CONNECTION_WINDOW))
        .add_service(grpc::service(state.clone()))
        .add_service(otlp::service(state.clone()))
        .add_service(flight::service(state.clone()))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listeners.grpc),
            async move {
                let _ = grpc_stop.recv().await;
            },
        );
    let http = axum::serve(listeners.http, http::router(state.clone())).with_graceful_shutdown(
        async move {
            let _ = http_stop.recv().await;
        },
    );
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new requests, draining");
        let _ = tx.send(());
    };
    let (g, h, ()) = tokio::join!(grpc, http, signal);
    g?;
    h.map_err(Error::Http)?;
    Ok(())
}
