//! Body types and request-body buffering.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body::{Body as _, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Empty, Full, StreamBody};
use hyper::body::Incoming;

/// Error type of proxied bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type flysim sends to Machines and to clients.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub(crate) fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn incoming(b: Incoming) -> ProxyBody {
    b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

/// A request body as the proxy holds it.
pub(crate) enum RequestBody {
    /// Fully buffered (within the replay limit): can be sent any number of times.
    Buffered(Bytes),
    /// Too large to buffer: streamed through once, cannot be replayed.
    Streaming(Option<ProxyBody>),
}

impl RequestBody {
    /// Whether the request can be sent again.
    pub(crate) fn replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered(_))
    }

    /// A body for the next delivery, or `None` when a streamed body was used
    /// up. A non-empty buffered body comes without a declared length when
    /// `no_length` (so HTTP/2 sends no `content-length`: the client sent none).
    pub(crate) fn take(&mut self, no_length: bool) -> Option<ProxyBody> {
        match self {
            RequestBody::Buffered(b) if no_length && !b.is_empty() => {
                let data = b.clone();
                let once =
                    futures_util::stream::once(async move { Ok::<_, BoxError>(Frame::data(data)) });
                Some(StreamBody::new(once).boxed_unsync())
            }
            RequestBody::Buffered(b) => Some(full(b.clone())),
            RequestBody::Streaming(s) => s.take(),
        }
    }
}

/// Reads `body` into memory as long as it stays within `limit` bytes; a larger body
/// (declared or discovered while reading) is returned as a stream that yields
/// whatever was already read followed by the rest.
pub(crate) async fn buffer(mut body: Incoming, limit: usize) -> Result<RequestBody, hyper::Error> {
    if body.is_end_stream() {
        return Ok(RequestBody::Buffered(Bytes::new()));
    }
    if body.size_hint().exact().is_some_and(|n| n > limit as u64) {
        return Ok(RequestBody::Streaming(Some(incoming(body))));
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        // Trailers are dropped.
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                let prefix = buf.freeze();
                let head =
                    futures_util::stream::once(
                        async move { Ok::<_, BoxError>(Frame::data(prefix)) },
                    );
                let rest = BodyStream::new(incoming(body));
                let stream = head.chain(rest);
                return Ok(RequestBody::Streaming(Some(
                    StreamBody::new(stream).boxed_unsync(),
                )));
            }
        }
    }
    Ok(RequestBody::Buffered(buf.freeze()))
}

/// Reads all of `body` if it is at most `limit` bytes long; the error
/// describes a failed read or says the limit was exceeded.
pub(crate) async fn read_limited(mut body: ProxyBody, limit: usize) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| crate::upstream::error_chain(&*e))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err("length limit exceeded".to_owned());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}
