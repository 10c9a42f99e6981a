//! The request body after authorization: untouched, or replayed from the bounded buffer that
//! was read to find a body token.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

pin_project_lite::pin_project! {
    /// A request body handed back by [`super::Authorizer::authorize_http`].
    #[project = AuthzBodyProj]
    pub enum AuthzBody<B> {
        /// The body was not read.
        Original { #[pin] body: B },
        /// The body was read whole (it fit the limit) and is replayed.
        Buffered { data: Option<Bytes>, trailers: Option<HeaderMap> },
    }
}

impl<B> AuthzBody<B> {
    /// Wraps a body that was not read.
    pub fn original(body: B) -> Self {
        AuthzBody::Original { body }
    }

    /// A replay of buffered bytes and trailers.
    pub fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        AuthzBody::Buffered {
            data: (!data.is_empty()).then_some(data),
            trailers,
        }
    }
}

impl<B> Body for AuthzBody<B>
where
    B: Body,
    B::Data: Into<Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            AuthzBodyProj::Original { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame.map_data(Into::into)))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            AuthzBodyProj::Buffered { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AuthzBody::Original { body } => body.is_end_stream(),
            AuthzBody::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AuthzBody::Original { body } => body.size_hint(),
            AuthzBody::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// Why a body could not be buffered.
pub enum BufferFailure<E> {
    /// The body is larger than the limit.
    TooLarge,
    /// Reading the body failed.
    Read(E),
}

/// Reads `body` whole, refusing as soon as it would exceed `limit` bytes.
pub async fn read_bounded<B>(
    body: B,
    limit: usize,
) -> Result<(Bytes, Option<HeaderMap>), BufferFailure<B::Error>>
where
    B: Body,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(BufferFailure::TooLarge);
    }
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BufferFailure::Read)?;
        match frame.into_data() {
            Ok(mut data) => {
                if buf.len() + data.remaining() > limit {
                    return Err(BufferFailure::TooLarge);
                }
                while data.has_remaining() {
                    let chunk = data.chunk();
                    let n = chunk.len();
                    buf.extend_from_slice(chunk);
                    data.advance(n);
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok((buf.freeze(), trailers))
}
