//! One WebSocket connection's transport: the TCP stream taken back from
//! hyper after the upgrade (with any bytes hyper had read past the
//! request), client frames read and checked, server frames queued and
//! written.
//!
//! What an idle connection holds is the stream and a few words: no read
//! buffer (the task waits for readability, then reads into a buffer on
//! the thread's stack; only bytes of an unfinished frame or message are
//! kept, and given back once it is complete) and no write buffer (frames
//! wait as `Bytes` shared with every other subscriber, and are written
//! as header and payload slices with one `writev` per batch). Reads and
//! writes are non-blocking calls in plain functions, so neither the
//! stack buffer nor the slice array is part of the connection's task.
//!
//! Should the upgraded connection not be a plain `TcpStream` (it always
//! is with the listener's hyper builder), the same protocol runs over
//! hyper's `Upgraded` with ordinary async reads and writes.
//!
//! The stream is shared (an `Arc`) with the connection's outbox, whose
//! pushes may write a frame to it themselves while the connection's task
//! waits with nothing to write ([`write_text_now`]; who writes when is
//! decided by the outbox, see [`crate::outbox`]). Tokio's stream is made
//! for that: its non-blocking calls take `&self`, reads and writes have
//! their own readiness, and a `WouldBlock` from either writer clears the
//! write readiness the task's flush then waits for.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::frame::{self, Header, Opcode, Violation};
use super::message::{Assembler, Message};

/// The most bytes one read takes (the buffer is on the stack); the
/// config's `ws_read_buffer_bytes` is validated against it.
pub(crate) const READ_CHUNK_MAX: usize = 16 * 1024;
/// Frames gathered into one `writev` at most (two slices each, well under
/// the kernel's `IOV_MAX` of 1024).
const WRITE_FRAMES_MAX: usize = 64;
/// Queue entries kept allocated once the queue is empty: an idle
/// connection does not keep the capacity a burst gave it.
const QUEUE_KEEP: usize = 8;
/// Bytes read and thrown away after a violation while waiting for the
/// client to close, at most.
const DISCARD_MAX: usize = 1 << 20;
/// After a violation, the connection is closed once the client has been
/// quiet this long (its close frame comes at once if it answers at all;
/// waiting for its EOF would wait for its own close timeout).
const DISCARD_QUIET: Duration = Duration::from_millis(100);

/// Sizes from the node's config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The largest message (and so frame) a client may send.
    pub(crate) max_message: usize,
    /// Bytes read from the socket per call.
    pub(crate) read_chunk: usize,
    /// Queued frames are gathered into one write up to this many bytes.
    pub(crate) write_gather: usize,
}

enum Transport {
    /// Shared with the outbox's direct path.
    Tcp(Arc<TcpStream>),
    Upgraded(Box<TokioIo<Upgraded>>),
}

/// A server frame waiting to be written.
struct Out {
    opcode: Opcode,
    payload: Bytes,
}

pub(crate) struct Socket {
    io: Transport,
    /// Bytes read and not yet taken as frames: empty, with no allocation,
    /// between messages.
    input: Vec<u8>,
    assembler: Assembler,
    limits: Limits,
    queue: VecDeque<Out>,
    /// Bytes of the queue's first frame already written.
    written: usize,
    /// The client broke the protocol: nothing more of its is read.
    failed: bool,
    /// The client's side has ended (EOF, error, violation or its close).
    read_done: bool,
}

impl Socket {
    /// The connection hyper upgraded.
    pub(crate) fn new(upgraded: Upgraded, limits: Limits) -> Socket {
        let limits = Limits { read_chunk: limits.read_chunk.clamp(1, READ_CHUNK_MAX), ..limits };
        let (io, input) = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (Transport::Tcp(Arc::new(parts.io.into_inner())), parts.read_buf.to_vec()),
            Err(upgraded) => {
                tracing::debug!("upgraded connection is not a TcpStream; using the generic transport");
                (Transport::Upgraded(Box::new(TokioIo::new(upgraded))), Vec::new())
            }
        };
        Socket {
            io,
            input,
            assembler: Assembler::new(limits.max_message),
            limits,
            queue: VecDeque::new(),
            written: 0,
            failed: false,
            read_done: false,
        }
    }

    /// The TCP stream, for the outbox's direct path (`None` over the
    /// generic transport, which keeps the task's writes only).
    pub(crate) fn shared_tcp(&self) -> Option<Arc<TcpStream>> {
        match &self.io {
            Transport::Tcp(tcp) => Some(Arc::clone(tcp)),
            Transport::Upgraded(_) => None,
        }
    }

    /// Nothing is waiting to be written (the task may hand the socket to
    /// the outbox's direct path).
    pub(crate) fn is_drained(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues the rest of a text frame whose first `written` bytes (header
    /// included) a direct write put on the wire; it must be the first
    /// thing written next, so it is only called with nothing queued.
    pub(crate) fn resume(&mut self, text: Bytes, written: usize) {
        debug_assert!(self.queue.is_empty(), "the rest of a frame is written before anything else");
        self.queue.push_front(Out { opcode: Opcode::Text, payload: text });
        self.written = written;
    }

    /// The next message from the client: `None` once its side has ended,
    /// an error (once) when it broke the protocol. Cancel safe: what was
    /// read is kept for the next call. A hand-written poll, so the future
    /// every idle connection's task holds is a reference, not a state
    /// machine of nested futures (~190 B less per connection).
    pub(crate) fn recv(&mut self) -> impl Future<Output = Option<Result<Message, Violation>>> + '_ {
        std::future::poll_fn(move |cx| self.poll_recv(cx))
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Violation>>> {
        loop {
            if self.read_done {
                return Poll::Ready(None);
            }
            match self.parse() {
                Ok(Some(msg)) => {
                    if matches!(msg, Message::Close(_)) {
                        self.read_done = true;
                    }
                    return Poll::Ready(Some(Ok(msg)));
                }
                Ok(None) => {}
                Err(violation) => {
                    self.failed = true;
                    self.read_done = true;
                    self.input = Vec::new();
                    return Poll::Ready(Some(Err(violation)));
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) | Err(_) => {
                    self.read_done = true;
                    return Poll::Ready(None);
                }
                Ok(_) => {}
            }
        }
    }

    /// Takes whole frames from the input until one completes a message.
    fn parse(&mut self) -> Result<Option<Message>, Violation> {
        loop {
            let Some(head) = frame::parse_head(&self.input, self.limits.max_message)? else {
                return Ok(None);
            };
            let end = head.header_len + head.payload_len;
            if self.input.len() < end {
                // Room for the rest of the frame, so it is read into place.
                self.input.reserve_exact(end - self.input.len());
                return Ok(None);
            }
            let payload = &mut self.input[head.header_len..end];
            frame::unmask(payload, head.mask);
            let message = self.assembler.push(&head, payload);
            if self.input.len() == end {
                // Between messages an idle connection holds no buffer.
                self.input = Vec::new();
            } else {
                self.input.drain(..end);
            }
            if let Some(message) = message? {
                return Ok(Some(message));
            }
        }
    }

    /// Reads what the socket has; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let chunk = self.limits.read_chunk;
        match &mut self.io {
            Transport::Tcp(tcp) => loop {
                ready!(tcp.poll_read_ready(cx))?;
                // A `WouldBlock` clears the readiness: the next poll waits.
                match read_now(tcp, &mut self.input, chunk) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    read => return Poll::Ready(read),
                }
            },
            Transport::Upgraded(io) => {
                let mut buf = [0u8; READ_CHUNK_MAX];
                let mut read = ReadBuf::new(&mut buf[..chunk]);
                ready!(Pin::new(io.as_mut()).poll_read(cx, &mut read))?;
                self.input.extend_from_slice(read.filled());
                Poll::Ready(Ok(read.filled().len()))
            }
        }
    }

    /// Queues a text frame; it is written by the next [`Socket::flush`].
    pub(crate) fn feed(&mut self, text: Bytes) {
        self.queue.push_back(Out { opcode: Opcode::Text, payload: text });
    }

    /// Queues the pong that answers a ping (§5.5.2).
    pub(crate) fn pong(&mut self, payload: Bytes) {
        self.queue.push_back(Out { opcode: Opcode::Pong, payload });
    }

    /// Queues and writes a text frame.
    pub(crate) async fn send(&mut self, text: Bytes) -> io::Result<()> {
        self.feed(text);
        self.flush().await
    }

    /// Writes an empty ping (the heartbeat), after anything queued.
    pub(crate) async fn ping(&mut self) -> io::Result<()> {
        self.queue.push_back(Out { opcode: Opcode::Ping, payload: Bytes::new() });
        self.flush().await
    }

    /// Writes our close frame, after anything queued.
    pub(crate) async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        // A control frame's payload is 125 bytes at most.
        let mut cut = reason.len().min(frame::MAX_CONTROL - 2);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..cut]);
        self.queue.push_back(Out { opcode: Opcode::Close, payload: Bytes::from(payload) });
        self.flush().await
    }

    /// Answers the client's close frame with its code (none if it sent none).
    pub(crate) async fn close_reply(&mut self, code: Option<u16>) -> io::Result<()> {
        let payload = code.map_or_else(Bytes::new, |c| Bytes::copy_from_slice(&c.to_be_bytes()));
        self.queue.push_back(Out { opcode: Opcode::Close, payload });
        self.flush().await
    }

    /// After our close frame: waits for the client's (the server closes
    /// the TCP connection after it, §7.1.1). After a violation nothing
    /// the client sends is parsed: our side is shut and its bytes are
    /// read and dropped until it closes or goes quiet, so our close frame
    /// is not lost to a reset (closing with unread input sends one). The
    /// caller bounds the wait.
    pub(crate) async fn linger(&mut self) {
        if !self.failed {
            while let Some(Ok(msg)) = self.recv().await {
                if matches!(msg, Message::Close(_)) {
                    return;
                }
            }
            return;
        }
        let _ = match &mut self.io {
            // What tokio's `poll_shutdown` does, on the shared stream.
            Transport::Tcp(tcp) => socket2::SockRef::from(&**tcp).shutdown(std::net::Shutdown::Write),
            Transport::Upgraded(io) => io.shutdown().await,
        };
        let mut discarded = 0;
        while discarded < DISCARD_MAX {
            self.input.clear();
            match tokio::time::timeout(DISCARD_QUIET, std::future::poll_fn(|cx| self.poll_fill(cx))).await {
                Ok(Ok(0) | Err(_)) | Err(_) => break,
                Ok(Ok(n)) => discarded += n,
            }
        }
        self.input = Vec::new();
    }

    /// Writes every queued frame. A hand-written poll, as `recv`: the
    /// future its callers hold is a reference, not tokio's readiness
    /// future and a boxed writer (~190 B in every connection's task).
    pub(crate) fn flush(&mut self) -> impl Future<Output = io::Result<()>> + '_ {
        std::future::poll_fn(move |cx| self.poll_flush(cx))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let gather = self.limits.write_gather;
        while !self.queue.is_empty() {
            let (queue, written) = (&self.queue, self.written);
            let wrote = match &mut self.io {
                Transport::Tcp(tcp) => {
                    match write_gathered(queue, written, gather, |s| Poll::Ready(tcp.try_write_vectored(s))) {
                        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                            // The failed write cleared the readiness: this waits.
                            ready!(tcp.poll_write_ready(cx))?;
                            continue;
                        }
                        wrote => ready!(wrote)?,
                    }
                }
                Transport::Upgraded(io) => {
                    let write = |s: &[IoSlice<'_>]| Pin::new(io.as_mut()).poll_write_vectored(cx, s);
                    ready!(write_gathered(queue, written, gather, write))?
                }
            };
            if wrote == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            advance(&mut self.queue, &mut self.written, wrote);
        }
        if let Transport::Upgraded(io) = &mut self.io {
            ready!(Pin::new(io.as_mut()).poll_flush(cx))?;
        }
        if self.queue.capacity() > QUEUE_KEEP {
            self.queue = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }
}

/// Writes one text frame (header made here, payload shared) with one
/// non-blocking vectored write: returns the bytes the socket took and the
/// frame's length, or `WouldBlock` (tokio then waits for writability on
/// the next poll of the task's flush).
pub(crate) fn write_text_now(tcp: &TcpStream, text: &[u8]) -> io::Result<(usize, usize)> {
    let header = Header::new(Opcode::Text, text.len());
    let len = header.as_slice().len() + text.len();
    let wrote = tcp.try_write_vectored(&[IoSlice::new(header.as_slice()), IoSlice::new(text)])?;
    Ok((wrote, len))
}

/// One non-blocking read into a stack buffer, appended to `input`.
fn read_now(tcp: &TcpStream, input: &mut Vec<u8>, chunk: usize) -> io::Result<usize> {
    let spare = input.capacity() - input.len();
    if spare >= chunk {
        // The rest of a frame already has its room (see `parse`).
        return tcp.try_read_buf(input);
    }
    let mut buf = [0u8; READ_CHUNK_MAX];
    let n = tcp.try_read(&mut buf[..chunk])?;
    input.extend_from_slice(&buf[..n]);
    Ok(n)
}

/// One vectored write (by `write`) of the queue's first frames, headers
/// made here and payloads shared, up to `gather` bytes (at least a
/// frame), from `written` bytes into the first; returns what `write` did.
fn write_gathered(
    queue: &VecDeque<Out>,
    written: usize,
    gather: usize,
    write: impl FnOnce(&[IoSlice<'_>]) -> Poll<io::Result<usize>>,
) -> Poll<io::Result<usize>> {
    let mut headers = [Header::EMPTY; WRITE_FRAMES_MAX];
    let mut frames = 0;
    let mut bytes = 0;
    for (header, out) in headers.iter_mut().zip(queue.iter()) {
        if frames > 0 && bytes >= gather {
            break;
        }
        *header = Header::new(out.opcode, out.payload.len());
        bytes += header.as_slice().len() + out.payload.len();
        frames += 1;
    }
    let mut slices = [IoSlice::new(&[]); 2 * WRITE_FRAMES_MAX];
    let mut n = 0;
    let mut skip = written;
    for (header, out) in headers[..frames].iter().zip(queue.iter()) {
        for part in [header.as_slice(), &out.payload[..]] {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices[n] = IoSlice::new(&part[skip..]);
            skip = 0;
            n += 1;
        }
    }
    write(&slices[..n])
}

/// Drops the frames `wrote` bytes completed; keeps the offset into the next.
fn advance(queue: &mut VecDeque<Out>, written: &mut usize, wrote: usize) {
    let mut left = *written + wrote;
    while let Some(front) = queue.front() {
        let size = Header::new(front.opcode, front.payload.len()).as_slice().len() + front.payload.len();
        if left < size {
            break;
        }
        left -= size;
        queue.pop_front();
    }
    *written = left;
}
