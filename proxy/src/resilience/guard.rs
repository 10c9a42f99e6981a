//! A response body that holds guards (a concurrency permit, an in-flight counter) until the
//! body ends or is dropped, so that limits and load count whole exchanges, not just headers.

use std::any::Any;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

/// Something released when dropped.
pub type Guard = Box<dyn Any + Send + Sync>;

/// A response body carrying guards; see the module documentation.
#[derive(Debug)]
pub struct Guarded<B> {
    inner: B,
    guards: Vec<Guard>,
}

impl<B> Guarded<B> {
    /// A body with no guard yet.
    pub fn new(inner: B) -> Self {
        Guarded {
            inner,
            guards: Vec::new(),
        }
    }

    /// Adds a guard released with the body.
    pub fn hold(&mut self, guard: Guard) {
        self.guards.push(guard);
    }

    /// The inner body; the guards are released now (for callers whose body type cannot carry
    /// them, the exchange then counts until its response headers only).
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// Number of guards held (for tests and diagnostics).
    pub fn guards(&self) -> usize {
        self.guards.len()
    }
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let out = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(out, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            || this.inner.is_end_stream()
        {
            this.guards.clear();
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
