//! One client connection: read whole frames, answer each in order, close on broken framing.
//!
//! The read buffer grows only as far as the frame being read, and a frame's length is checked
//! against `max_frame_bytes` before any of it is buffered, so a peer cannot make the broker
//! allocate more than that. A frame whose length field is out of range breaks framing: the
//! connection is closed (only this one). A frame that is whole but undecodable gets an
//! `InvalidRequest` answer and the connection goes on, except a Produce with acks=0: it has no
//! answer, so any failure of one closes the connection (`dispatch::After::Close`).
//!
//! Memory: a frame larger than a read chunk takes its size from the shard's request memory
//! (`max_request_memory_bytes`) before its buffer exists, and gives it back once it is answered; a
//! connection whose frame does not fit stops reading until others' frames are served. So the
//! frames a shard buffers are bounded over all its connections, not only per connection. A frame
//! that holds request memory must arrive, and every response must be taken, within
//! `slow_peer_grace_ms` plus its size at `slow_peer_min_bytes_per_sec` (30 s plus 4 s per MiB by
//! default), or the connection is closed, so that peers sending large frames or reading answers
//! slowly (or never) cannot hold memory for as long as they like.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use futures_lite::future;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use glommio::sync::StaticPermit;
use mlog_wire::protocol::frame::{check_frame, REQUEST_HEADER_BYTES};

use crate::dispatch;
use crate::shard::Shard;

/// Bytes read from the socket at a time. A frame larger than this gets a buffer of its own, exactly
/// its size, once its length is known (as Kafka does): it is never regrown and copied while it
/// arrives, and batches split off it keep only it alive (see `dispatch::split_records`). Its pages
/// are touched only as bytes arrive, a chunk per read, so a peer that announces a large frame and
/// sends little makes the broker hold little.
pub(crate) const READ_CHUNK_BYTES: usize = 64 << 10;
/// How long a write to a client may block.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a stopping broker waits for a half-received frame.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) async fn serve(mut stream: TcpStream, ctx: Rc<Shard>) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    // A peer that stops reading must not pin this connection (and a stopping shard) forever.
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    // Whether `buf` is the current frame's own buffer (then it holds nothing else).
    let mut own_buffer = false;
    // The request memory the frame being read holds (frames with a buffer of their own only), and
    // when the frame must have arrived.
    let mut memory: Option<(StaticPermit, Instant)> = None;
    let mut pieces = Vec::new();
    loop {
        match check_frame(&buf, REQUEST_HEADER_BYTES, ctx.config.max_frame_bytes) {
            Ok(Some(n)) => {
                let frame = buf.split_to(n);
                own_buffer = false;
                pieces.clear();
                let unfinished = match dispatch::handle(&ctx, frame, &mut pieces).await {
                    dispatch::After::Continue => None,
                    dispatch::After::Unfinished(appends) => Some(appends),
                    dispatch::After::Close => {
                        tracing::warn!(shard = ctx.id(), %peer, "closing connection: a produce with acks=0 failed");
                        return;
                    }
                };
                match write_response(&mut stream, &pieces, &ctx).await {
                    Written::Whole => {}
                    Written::Failed => return,
                    Written::TooSlowly => {
                        tracing::warn!(shard = ctx.id(), %peer, "closing connection: a response was not taken in time");
                        return;
                    }
                }
                pieces.clear();
                // Appends the answer stopped waiting for end before the next request is read (their
                // batches still hold the frame's memory).
                if let Some(appends) = unfinished {
                    appends.finish().await;
                }
                // Release the response's buffers (cache entries, DMA reads) before waiting for the
                // next request, and the frame's request memory (what of it stays alive, batches in
                // the batch cache, that cache's own bound covers).
                memory = None;
                if ctx.stopping() {
                    return;
                }
            }
            Ok(None) => {
                if !read_more(&mut stream, &mut buf, &mut own_buffer, &mut memory, &ctx).await {
                    if memory.is_some_and(|(_, deadline)| Instant::now() >= deadline) {
                        tracing::warn!(shard = ctx.id(), %peer, "closing connection: a frame arrived too slowly");
                    }
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(shard = ctx.id(), %peer, error = %e, "closing connection: broken framing");
                return;
            }
        }
    }
}

enum Written {
    Whole,
    Failed,
    /// Not within `BrokerConfig::slow_peer_allowance`: a peer reading slowly would otherwise keep
    /// the response's buffers (up to half a frame of fetched data) alive for as long as it likes.
    TooSlowly,
}

/// Writes a response's pieces.
async fn write_response(
    stream: &mut TcpStream,
    pieces: &[dispatch::Piece],
    ctx: &Shard,
) -> Written {
    let total: usize = pieces.iter().map(|p| p.bytes().len()).sum();
    let write = async {
        for piece in pieces {
            stream.write_all(piece.bytes()).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    future::or(
        async {
            match write.await {
                Ok(()) => Written::Whole,
                Err(_) => Written::Failed,
            }
        },
        async {
            glommio::timer::sleep(ctx.config.slow_peer_allowance(total)).await;
            Written::TooSlowly
        },
    )
    .await
}

/// Reads at least one byte into `buf`; false when the peer closed, the read failed, or the broker
/// is stopping while this connection is idle.
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    own_buffer: &mut bool,
    memory: &mut Option<(StaticPermit, Instant)>,
    ctx: &Shard,
) -> bool {
    let start = buf.len();
    // A known frame length says how much is still to come (check_frame bounded it); each read
    // fills at most a chunk.
    let want = match buf.first_chunk::<4>() {
        Some(len) => {
            let total = u32::from_be_bytes(*len) as usize + 4;
            // `buf` holds only this frame's start here (a longer `buf` would hold the whole frame).
            if total > READ_CHUNK_BYTES && !*own_buffer {
                // The length prefix is not counted: a frame of `max_frame_bytes`, which the config
                // lets equal the whole request memory, must fit.
                let units = (total - 4) as u64;
                let granted = future::or(
                    async { ctx.request_memory.acquire_static_permit(units).await.ok() },
                    async {
                        ctx.until_stopping().await;
                        None
                    },
                )
                .await;
                let Some(permit) = granted else {
                    return false;
                };
                let allowed = ctx.config.slow_peer_allowance(total);
                *memory = Some((permit, Instant::now() + allowed));
                let mut own = BytesMut::with_capacity(total);
                own.extend_from_slice(buf);
                *buf = own;
                *own_buffer = true;
            }
            (total - start).clamp(1, READ_CHUNK_BYTES)
        }
        None => READ_CHUNK_BYTES,
    };
    let deadline = memory.as_ref().map(|(_, d)| *d);
    let stop_or_deadline = future::or(
        async {
            ctx.until_stopping().await;
            // Stopping: an idle connection closes now, one in the middle of a frame gets a moment
            // to finish sending it.
            if start > 0 {
                glommio::timer::sleep(STOP_GRACE).await;
            }
        },
        async {
            match deadline {
                Some(d) => glommio::timer::sleep(d.saturating_duration_since(Instant::now())).await,
                None => future::pending().await,
            }
        },
    );
    let read = future::or(async { Some(recv_into(stream, buf, want).await) }, async {
        stop_or_deadline.await;
        None
    })
    .await;
    matches!(read, Some(Ok(n)) if n > 0)
}

/// Receives up to `want` bytes onto the end of `buf`, straight into its spare capacity. Reading
/// through `AsyncRead` needs an initialized target, and zeroing each read's target first (most of
/// which a read leaves unfilled) cost the broker more CPU than the socket copy itself.
async fn recv_into(stream: &TcpStream, buf: &mut BytesMut, want: usize) -> std::io::Result<usize> {
    buf.reserve(want);
    loop {
        let spare = buf.spare_capacity_mut();
        let len = want.min(spare.len());
        // SAFETY: recv writes at most `len` bytes at the pointer, all inside the spare capacity.
        let got = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                len,
                libc::MSG_DONTWAIT,
            )
        };
        if let Ok(got) = usize::try_from(got) {
            // SAFETY: the kernel initialized the `got` bytes it received, right after the length.
            unsafe { buf.set_len(buf.len() + got) };
            return Ok(got);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            // Nothing to read yet: wait until there is (a peek consumes nothing), then receive.
            std::io::ErrorKind::WouldBlock => {
                stream.peek(&mut [0u8; 1]).await?;
            }
            std::io::ErrorKind::Interrupted => {}
            _ => return Err(e),
        }
    }
}
