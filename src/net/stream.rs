//! Stream adapters that the shared port needs: replaying bytes that routing
//! already read, and counting what crosses the wire for the outcome records.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::admission::Ticket;

/// A stream whose first bytes were already read (to decide where it goes) and
/// are handed out again before the rest, so the next owner sees the whole stream.
#[derive(Debug)]
pub struct Rewound<S> {
    prefix: Vec<u8>,
    consumed: usize,
    inner: S,
}

impl<S> Rewound<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            consumed: 0,
            inner,
        }
    }

    /// The bytes that will be replayed and have not been read yet.
    pub fn pending_prefix(&self) -> &[u8] {
        self.prefix.get(self.consumed..).unwrap_or_default()
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The underlying stream; only sound once the prefix was read, otherwise
    /// those bytes are lost.
    pub fn into_inner(self) -> (Vec<u8>, S) {
        let rest = self.pending_prefix().to_vec();
        (rest, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.consumed < this.prefix.len() {
            let rest = this.prefix.get(this.consumed..).unwrap_or_default();
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            this.consumed = this.consumed.saturating_add(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Bytes read from and written to one connection. Shared so that the owner of
/// the record can read the totals while the session holds the stream.
#[derive(Debug, Default)]
pub struct ByteCounters {
    received: AtomicU64,
    sent: AtomicU64,
}

impl ByteCounters {
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.received().saturating_add(self.sent())
    }
}

#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    counters: Arc<ByteCounters>,
    /// An inbound connection's place under admission control: released with
    /// the stream, and the stream fails once it is evicted.
    ticket: Option<Ticket>,
}

impl<S> Counted<S> {
    pub fn new(inner: S) -> Self {
        Self::with_counters(inner, Arc::default())
    }

    pub fn with_counters(inner: S, counters: Arc<ByteCounters>) -> Self {
        Self {
            inner,
            counters,
            ticket: None,
        }
    }

    /// An inbound stream holding its admission place.
    pub fn admitted(inner: S, ticket: Ticket) -> Self {
        Self {
            inner,
            counters: Arc::default(),
            ticket: Some(ticket),
        }
    }

    fn check_eviction(&self, cx: &mut Context<'_>) -> io::Result<()> {
        match &self.ticket {
            Some(ticket) => ticket.eviction.check(cx),
            None => Ok(()),
        }
    }

    pub fn counters(&self) -> Arc<ByteCounters> {
        self.counters.clone()
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check_eviction(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        this.counters
            .received
            .fetch_add(u64::try_from(read).unwrap_or(u64::MAX), Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check_eviction(cx) {
            return Poll::Ready(Err(e));
        }
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.counters
                .sent
                .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn rewound_replays_prefix_then_stream_and_counts() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let counted = Counted::new(a);
        let counters = counted.counters();
        let mut s = Rewound::new(b"hello".to_vec(), counted);
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
        // The replayed prefix was counted when it was first read, not again.
        assert_eq!(counters.received(), 6);
    }
}
