//! The demo app's response body: one chunk of data, then optional trailers (gRPC needs them).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

#[derive(Debug, Default)]
pub struct DemoBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

// === impl DemoBody ===

impl DemoBody {
    pub fn full(data: impl Into<Bytes>) -> DemoBody {
        let data: Bytes = data.into();
        DemoBody {
            data: (!data.is_empty()).then_some(data),
            trailers: None,
        }
    }

    pub fn with_trailers(data: Option<Bytes>, trailers: HeaderMap) -> DemoBody {
        DemoBody {
            data,
            trailers: Some(trailers),
        }
    }
}

impl Body for DemoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let len = self.data.as_ref().map_or(0, |data| data.len() as u64);
        if self.trailers.is_none() {
            SizeHint::with_exact(len)
        } else {
            let mut hint = SizeHint::new();
            hint.set_lower(len);
            hint
        }
    }
}
