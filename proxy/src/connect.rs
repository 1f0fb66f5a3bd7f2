//! connect: upstream connections for the pooled clients, without per-response extras.
//!
//! Why not hyper-util's `HttpConnector` as is: its connections describe themselves with an
//! `HttpInfo` (peer and local address) that the legacy client then copies into the extensions
//! of *every* response — three allocations per request (the extensions map, its table and the
//! boxed value) for data nothing in the proxy reads. This wrapper connects the same way and
//! describes its connections as plain ones.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

/// Connects like [`HttpConnector`] (same settings), yielding [`Upstream`] connections.
#[derive(Clone)]
pub(crate) struct Connector(pub(crate) HttpConnector);

/// One upstream TCP connection.
pub(crate) struct Upstream(TokioIo<TcpStream>);

type ConnectError = <HttpConnector as Service<Uri>>::Error;

// === impl Connector ===

impl Service<Uri> for Connector {
    type Response = Upstream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Upstream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { connecting.await.map(Upstream) })
    }
}

// === impl Upstream ===

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl Write for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
