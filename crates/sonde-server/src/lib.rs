//! Sonde's network services over one [`Storage`]: the `sonde.v1.Ingest` gRPC service
//! and the HTTP endpoints (`/healthz`, `/readyz`, `/api/v1/admin/flush`, `/metrics`).
//!
//! Design decision: storage is synchronous (its WAL thread does group commit), so
//! every storage call runs on tokio's blocking pool; the async side never blocks.
//! Errors become protocol statuses in exactly one place per protocol
//! ([`grpc::status`], [`http::error_response`]): bad input names the field and the
//! limit; internal faults are logged in full and reported opaquely.

pub mod calls;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod pricing;
pub mod remote_write;

use std::net::SocketAddr;
use std::sync::Arc;

use sonde_storage::Storage;
use tokio::net::TcpListener;

pub use metrics::Metrics;

/// The tenant used when authentication is off.
pub const DEFAULT_TENANT: &str = "default";

/// What the services share.
#[derive(Debug)]
pub struct AppState {
    pub storage: Arc<Storage>,
    pub metrics: Metrics,
    /// Prices for computing the cost of LLM calls that arrive without one.
    pub prices: Vec<pricing::Price>,
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
    let grpc = tonic::transport::Server::builder()
        .add_service(grpc::service(state.clone()))
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
