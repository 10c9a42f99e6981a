//! The body type of every response the data path returns, at the bottom of the layers so that
//! `limits`, `observe` and `http` can all name it.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// Body of every response the data path returns: the upstream's streamed body, or a small
/// synthesized one (error responses). An enum, so no per-request boxing.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;
