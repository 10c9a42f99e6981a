//! An in-test SPIFFE Workload API server (the published `workload.proto`, X.509 part), over a
//! Unix socket, written by hand with tonic because protoc is not available and the `spiffe`
//! crate keeps its generated types private.
//!
//! `FetchX509SVID` is server-streaming: every call first gets the current response, then every
//! response the test publishes. Calls without the `workload.spiffe.io: true` metadata header are
//! rejected with `InvalidArgument`, as SPIRE does.
//!
//! Self-contained (no `super::` imports) because `proxy/tests/it/identity_rotation.rs` includes
//! this same file with `#[path]` to drive sidecars through the Workload API source.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use tokio::net::UnixListener;
use tokio::sync::watch;

/// `X509SVIDRequest` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SvidRequest {}

/// `X509SVIDResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SvidResponse {
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<X509Svid>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub crl: Vec<Vec<u8>>,
    #[prost(map = "string, bytes", tag = "3")]
    pub federated_bundles: HashMap<String, Vec<u8>>,
}

/// `X509SVID`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct X509Svid {
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// DER certificates, leaf first, concatenated.
    #[prost(bytes = "vec", tag = "2")]
    pub x509_svid: Vec<u8>,
    /// PKCS#8 DER private key.
    #[prost(bytes = "vec", tag = "3")]
    pub x509_svid_key: Vec<u8>,
    /// DER root certificates of the SVID's trust domain, concatenated.
    #[prost(bytes = "vec", tag = "4")]
    pub bundle: Vec<u8>,
    #[prost(string, tag = "5")]
    pub hint: String,
}

/// A running server; drop it to stop serving.
pub struct WorkloadApiServer {
    pub socket: PathBuf,
    updates: watch::Sender<X509SvidResponse>,
    pub calls: Arc<AtomicUsize>,
    pub rejected: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WorkloadApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WorkloadApiServer {
    /// Serves `initial` on a new Unix socket at `socket`.
    pub fn start(socket: &Path, initial: X509SvidResponse) -> WorkloadApiServer {
        let (updates, _) = watch::channel(initial);
        let calls = Arc::new(AtomicUsize::new(0));
        let rejected = Arc::new(AtomicUsize::new(0));
        let listener = UnixListener::bind(socket).unwrap();
        let incoming = futures::stream::unfold(listener, |l| async move {
            let conn = l.accept().await.map(|(s, _)| s);
            Some((conn, l))
        });
        let svc = {
            let updates = updates.clone();
            let calls = calls.clone();
            let rejected = rejected.clone();
            tower::service_fn(move |req: http::Request<tonic::body::Body>| {
                let updates = updates.clone();
                let calls = calls.clone();
                let rejected = rejected.clone();
                async move {
                    if req.uri().path() != "/SpiffeWorkloadAPI/FetchX509SVID" {
                        let status = tonic::Status::unimplemented(format!(
                            "{} is not served by the test Workload API",
                            req.uri().path()
                        ));
                        return Ok::<_, Infallible>(status.into_http());
                    }
                    let handler = tower::service_fn(move |r: tonic::Request<X509SvidRequest>| {
                        let updates = updates.clone();
                        let calls = calls.clone();
                        let rejected = rejected.clone();
                        async move {
                            let ok = r
                                .metadata()
                                .get("workload.spiffe.io")
                                .is_some_and(|v| v == "true");
                            if !ok {
                                rejected.fetch_add(1, Ordering::SeqCst);
                                return Err(tonic::Status::invalid_argument(
                                    "security header missing from request",
                                ));
                            }
                            calls.fetch_add(1, Ordering::SeqCst);
                            let rx = updates.subscribe();
                            let stream =
                                futures::stream::unfold((rx, true), |(mut rx, first)| async move {
                                    if !first && rx.changed().await.is_err() {
                                        return None;
                                    }
                                    let msg = rx.borrow_and_update().clone();
                                    Some((Ok::<_, tonic::Status>(msg), (rx, false)))
                                })
                                .boxed();
                            Ok(tonic::Response::new(stream))
                        }
                    });
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                    Ok(grpc.server_streaming(handler, req).await)
                }
            })
        };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming(svc, incoming)
                .await;
        });
        WorkloadApiServer {
            socket: socket.to_owned(),
            updates,
            calls,
            rejected,
            task,
        }
    }

    /// The endpoint URI for the `spiffe` crate.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Streams `resp` to every open `FetchX509SVID` call (and serves it to new ones).
    pub fn publish(&self, resp: X509SvidResponse) {
        self.updates.send_replace(resp);
    }
}

/// Calls `FetchX509SVID` with or without the security header; returns the gRPC status code of
/// the first message (or `Ok` when one arrived).
pub async fn raw_fetch(socket: &Path, with_header: bool) -> tonic::Code {
    let path = socket.to_owned();
    let channel = tonic::transport::Endpoint::try_from("http://workload.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(X509SvidRequest {});
    if with_header {
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
    }
    let result = grpc
        .server_streaming::<_, X509SvidResponse, _>(
            req,
            http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchX509SVID"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    match result {
        Ok(resp) => match resp.into_inner().message().await {
            Ok(Some(_)) => tonic::Code::Ok,
            Ok(None) => tonic::Code::Unknown,
            Err(s) => s.code(),
        },
        Err(s) => s.code(),
    }
}
