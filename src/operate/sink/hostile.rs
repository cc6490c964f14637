//! The sink's hostile answers, as a broken or hostile push service gives them:
//! a body that never ends, a body that trickles a byte at a time, no answer
//! at all, and a connection reset. The reset needs the socket itself, so the
//! sink serves through [`SinkListener`], whose connections can be told to
//! reset (`SO_LINGER` 0, then closed) instead of answering.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How a scripted answer misbehaves, beyond its status and `Retry-After`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Misbehaviour {
    /// A normal answer.
    #[default]
    None,
    /// The status, then a body that never ends.
    EndlessBody,
    /// The status, then a body of one byte every 200 ms, for ever.
    Trickle,
    /// No answer at all: the request hangs until the client gives up.
    Hang,
    /// The connection is reset instead of answered.
    Reset,
}

/// A body for a misbehaving answer, if it has one of its own.
pub fn body(misbehaviour: Misbehaviour) -> Option<Body> {
    match misbehaviour {
        Misbehaviour::EndlessBody => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            Some(Body::from_stream(futures::stream::repeat_with(move || {
                Ok::<_, io::Error>(chunk.clone())
            })))
        }
        Misbehaviour::Trickle => Some(Body::from_stream(futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Some((Ok::<_, io::Error>(Bytes::from_static(b"x")), ()))
        }))),
        _ => None,
    }
}

/// Peers whose connection is to be reset instead of answered.
pub type Resets = Arc<Mutex<HashSet<SocketAddr>>>;

/// The sink's listener: plain TCP, with connections that can be reset.
pub struct SinkListener {
    pub inner: TcpListener,
    pub resets: Resets,
    /// Serve HTTPS: handshakes run in tasks of their own (a client that never
    /// finishes one holds up nobody), and finished ones arrive here.
    pub tls: Option<TlsHandshakes>,
}

/// How long a client may take over its TLS handshake before the sink drops it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS connections whose handshake is done, in the order they finished.
pub struct TlsHandshakes {
    acceptor: tokio_rustls::TlsAcceptor,
    done_tx: tokio::sync::mpsc::Sender<(SinkStream, SocketAddr)>,
    done: tokio::sync::mpsc::Receiver<(SinkStream, SocketAddr)>,
}

impl TlsHandshakes {
    pub fn new(acceptor: tokio_rustls::TlsAcceptor) -> TlsHandshakes {
        let (done_tx, done) = tokio::sync::mpsc::channel(64);
        TlsHandshakes {
            acceptor,
            done_tx,
            done,
        }
    }
}

/// The next TCP connection, as one that can be told to reset.
async fn accept_tcp(listener: &TcpListener, resets: &Resets) -> (ResettableStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let io = ResettableStream {
                    inner: stream,
                    peer,
                    resets: resets.clone(),
                };
                return (io, peer);
            }
            Err(e) => {
                tracing::debug!(error = %e, "sink: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

impl Listener for SinkListener {
    type Io = SinkStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let SinkListener { inner, resets, tls } = self;
        let Some(tls) = tls else {
            let (io, peer) = accept_tcp(inner, resets).await;
            return (SinkStream::Plain(io), peer);
        };
        loop {
            let (acceptor, done_tx) = (tls.acceptor.clone(), tls.done_tx.clone());
            tokio::select! {
                Some(done) = tls.done.recv() => return done,
                (io, peer) = accept_tcp(inner, resets) => {
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                            Ok(Ok(stream)) => {
                                let _ = done_tx.send((SinkStream::Tls(Box::new(stream)), peer)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "sink: TLS handshake failed"),
                            Err(_) => tracing::debug!("sink: TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection to the sink, plain or TLS.
pub enum SinkStream {
    Plain(ResettableStream),
    Tls(Box<tokio_rustls::server::TlsStream<ResettableStream>>),
}

impl AsyncRead for SinkStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SinkStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SinkStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SinkStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SinkStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SinkStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SinkStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SinkStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SinkStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SinkStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The address of the peer of a request, for the handler.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, SinkListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, SinkListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

/// A TCP connection that resets itself once its peer is in [`Resets`].
pub struct ResettableStream {
    inner: TcpStream,
    peer: SocketAddr,
    resets: Resets,
}

impl ResettableStream {
    /// When told to: make the close a reset (`SO_LINGER` 0) and fail the I/O, so the
    /// server drops the connection without answering.
    fn reset_now(&self) -> Option<io::Error> {
        if !self.resets.lock().remove(&self.peer) {
            return None;
        }
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt(2) on a socket this stream owns, with a value of the right size.
        unsafe {
            libc::setsockopt(
                self.inner.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        Some(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "scripted reset",
        ))
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.reset_now() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
