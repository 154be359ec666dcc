//! The proxy's own answers on the HTTP front door: short `text/plain` pages that say what
//! happened and what to do (a browser shows them as they are; `curl` prints them).

use super::pool::{Body, BoxError};
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

/// A response with `message` as its body; `close` ends the connection after it.
pub(crate) fn page(status: StatusCode, message: &str, close: bool) -> Response<Body> {
    let body = format!("{message}\n");
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// A body of bytes known up front.
pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e| -> BoxError { match e {} })
        .boxed()
}

/// An empty body.
pub(crate) fn empty() -> Body {
    Empty::new().map_err(|e| -> BoxError { match e {} }).boxed()
}
