//! Lets clients that send a URL as HTTP/2 `:authority` reach the store
//! (issue #14). Go's clientv3 3.4 dials each endpoint of a maintenance call
//! (`etcdctl endpoint status`, `hashkv`, `defrag`, `move-leader`) with the
//! endpoint as given, so `:authority` is `http://127.0.0.1:2379`. etcd
//! (grpc-go) accepts it; h2, under tonic, parses `:authority` as a URI
//! authority and resets the stream with PROTOCOL_ERROR, and has no setting
//! to relax that (hyperium/h2#525, closed as "the client is wrong").
//!
//! [`AuthorityFix`] sits between the byte stream and h2 and rewrites only
//! the client's header blocks: an `:authority` literal sent with a name
//! *reference* (HPACK static index 1, what every encoder sends) or a plain
//! literal `:authority` name becomes an ordinary `x-url-auth` field with the
//! same value bytes, untouched (Huffman-coded or not), when it is the last
//! pseudo-header of its block, as Go sends it (h2 refuses a pseudo-header
//! after an ordinary field, so one followed by `:path`, as h2's own client
//! sends it, is left alone; those clients send a valid authority). Nothing
//! in the store reads the authority (tonic routes on `:path`), so valid
//! authorities renamed lose nothing either. The new name has the same length as `:authority`, so an
//! entry the client adds to its HPACK dynamic table has the same size
//! (RFC 7541 §4.1) in h2's table: both tables evict the same entries and
//! every later index still points where the client meant. That is why the
//! values are never decoded here, and why no table is tracked.
//!
//! What this does not handle: a connection that does not start with the
//! HTTP/2 preface, a header block over [`MAX_BLOCK`], a block that breaks
//! HTTP/2 framing or HPACK, and a Huffman-coded *name* `:authority` (no known
//! encoder sends one) all pass through unchanged, for h2 to judge. Frames
//! other than HEADERS and CONTINUATION are passed on as they arrive, so
//! DATA is never held back. Writes (server to client) are not touched.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What every HTTP/2 connection with prior knowledge starts with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may announce; rewritten
/// blocks are cut into frames of at most this size, valid whatever h2 says.
const MAX_FRAME: usize = 16_384;
/// Larger header blocks are passed on unchanged rather than held in memory.
pub(crate) const MAX_BLOCK: usize = 1024 * 1024;
/// The name `:authority` fields get: as long as `:authority` (see above).
const NEW_NAME: &[u8] = b"x-url-auth";
const AUTHORITY: &[u8] = b":authority";
/// How much is read from the client at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Where the reader is in the client's byte stream.
#[derive(Debug)]
enum Phase {
    /// Checking the connection preface.
    Preface,
    /// At a frame boundary.
    Frame,
    /// Inside a frame that is passed on as it comes: bytes left.
    Passing(usize),
    /// Inside a header block: HEADERS seen, CONTINUATION expected.
    Block(Block),
    /// Not HTTP/2 as expected: everything passes unchanged.
    Verbatim,
}

/// A header block being collected.
#[derive(Debug, Default)]
struct Block {
    stream: [u8; 4],
    /// END_STREAM of the HEADERS frame.
    flags: u8,
    /// The HEADERS frame's priority fields, if it had them.
    priority: Vec<u8>,
    /// The HPACK fragments, padding removed.
    fragment: Vec<u8>,
    /// The frames as received, sent instead when nothing is rewritten.
    original: Vec<u8>,
}

/// A client byte stream whose `:authority` fields h2 will accept (see the
/// module doc). Everything else is the inner stream's.
pub(crate) struct AuthorityFix<IO> {
    io: IO,
    /// Read from the client; looked at up to `seen`. Consumed bytes are
    /// dropped once per read, not per frame (many small frames per read).
    raw: Vec<u8>,
    seen: usize,
    /// Ready for h2, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    phase: Phase,
    eof: bool,
}

impl<IO> AuthorityFix<IO> {
    pub fn new(io: IO) -> Self {
        AuthorityFix {
            io,
            raw: Vec::new(),
            seen: 0,
            out: Vec::new(),
            sent: 0,
            phase: Phase::Preface,
            eof: false,
        }
    }

    /// Moves what can be decided from `raw` to `out`.
    fn process(&mut self) {
        self.decide();
        self.raw.drain(..self.seen);
        self.seen = 0;
    }

    /// What is left of `raw` to look at.
    fn rest(&self) -> &[u8] {
        &self.raw[self.seen..]
    }

    /// Passes the next `n` bytes on unchanged.
    fn forward(&mut self, n: usize) {
        self.out
            .extend_from_slice(&self.raw[self.seen..self.seen + n]);
        self.seen += n;
    }

    fn decide(&mut self) {
        loop {
            let progressed = match std::mem::replace(&mut self.phase, Phase::Verbatim) {
                Phase::Preface => self.preface(),
                Phase::Frame => self.frame(),
                Phase::Passing(n) => self.pass(n),
                Phase::Block(b) => self.continuation(b),
                Phase::Verbatim => {
                    self.forward(self.rest().len());
                    false
                }
            };
            if !progressed {
                return;
            }
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let v = self.rest()[..n].to_vec();
        self.seen += n;
        v
    }

    fn preface(&mut self) -> bool {
        let n = self.rest().len().min(PREFACE.len());
        if self.rest()[..n] != PREFACE[..n] {
            self.phase = Phase::Verbatim;
            return true;
        }
        if n < PREFACE.len() {
            self.phase = Phase::Preface;
            return false;
        }
        self.forward(n);
        self.phase = Phase::Frame;
        true
    }

    fn pass(&mut self, left: usize) -> bool {
        let n = left.min(self.rest().len());
        self.forward(n);
        if n == left {
            self.phase = Phase::Frame;
            true
        } else {
            self.phase = Phase::Passing(left - n);
            false
        }
    }

    /// At a frame boundary: a HEADERS frame starts a block, anything else
    /// passes.
    fn frame(&mut self) -> bool {
        let Some((len, ty, _)) = header(self.rest()) else {
            self.phase = Phase::Frame;
            return false;
        };
        if ty != HEADERS || len > MAX_BLOCK {
            self.forward(FRAME_HEADER);
            self.phase = Phase::Passing(len);
            return true;
        }
        if self.rest().len() < FRAME_HEADER + len {
            self.phase = Phase::Frame;
            return false;
        }
        let frame = self.take(FRAME_HEADER + len);
        let flags = frame[4];
        let mut payload = &frame[FRAME_HEADER..];
        let mut pad = 0;
        if flags & PADDED != 0 {
            pad = payload.first().copied().map_or(usize::MAX, usize::from);
            payload = payload.get(1..).unwrap_or_default();
        }
        let prio = if flags & PRIORITY != 0 { 5 } else { 0 };
        if payload.len() < prio + pad {
            // Broken framing: h2 says so.
            self.out.extend(frame);
            self.phase = Phase::Verbatim;
            return true;
        }
        let mut block = Block {
            flags: flags & END_STREAM,
            priority: payload[..prio].to_vec(),
            fragment: payload[prio..payload.len() - pad].to_vec(),
            ..Block::default()
        };
        block.stream.copy_from_slice(&frame[5..9]);
        block.original = frame;
        self.end_or_continue(block, flags);
        true
    }

    /// After a frame of a header block: the block is whole (END_HEADERS), or
    /// a CONTINUATION must follow.
    fn end_or_continue(&mut self, block: Block, flags: u8) {
        if flags & END_HEADERS != 0 {
            self.finish(block);
            self.phase = Phase::Frame;
        } else {
            self.phase = Phase::Block(block);
        }
    }

    /// Inside a block: the next frame must be its CONTINUATION.
    fn continuation(&mut self, mut block: Block) -> bool {
        let Some((len, ty, flags)) = header(self.rest()) else {
            self.phase = Phase::Block(block);
            return false;
        };
        let ours = ty == CONTINUATION && self.rest()[5..9] == block.stream;
        if !ours || block.original.len() + len > MAX_BLOCK {
            // Not what HTTP/2 allows here, or too big: pass all unchanged.
            self.out.append(&mut block.original);
            self.phase = Phase::Verbatim;
            return true;
        }
        if self.rest().len() < FRAME_HEADER + len {
            self.phase = Phase::Block(block);
            return false;
        }
        let frame = self.take(FRAME_HEADER + len);
        block.fragment.extend_from_slice(&frame[FRAME_HEADER..]);
        block.original.extend(frame);
        self.end_or_continue(block, flags);
        true
    }

    /// Sends a whole block on: rewritten when it names `:authority`.
    fn finish(&mut self, mut block: Block) {
        let Some(fragment) = rewrite_block(&block.fragment) else {
            self.out.append(&mut block.original);
            return;
        };
        let first = MAX_FRAME - block.priority.len();
        let mut rest: &[u8] = &fragment;
        let mut ty = HEADERS;
        let mut flags = block.flags
            | if block.priority.is_empty() {
                0
            } else {
                PRIORITY
            };
        let mut prefix = std::mem::take(&mut block.priority);
        let mut room = first;
        loop {
            let n = rest.len().min(room);
            let last = n == rest.len();
            let len = prefix.len() + n;
            let f = if last { flags | END_HEADERS } else { flags };
            self.out
                .extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, f]);
            self.out.extend_from_slice(&block.stream);
            self.out.append(&mut prefix);
            self.out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if last {
                return;
            }
            ty = CONTINUATION;
            flags = 0;
            room = MAX_FRAME;
        }
    }
}

/// A frame header at the start of `raw`: (length, type, flags).
fn header(raw: &[u8]) -> Option<(usize, u8, u8)> {
    let h = raw.get(..FRAME_HEADER)?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    Some((len, h[3], h[4]))
}

/// An HPACK integer with an `n`-bit prefix at `at` (RFC 7541 §5.1): its
/// value and where it ends.
fn int(b: &[u8], at: usize, n: u32) -> Option<(usize, usize)> {
    let mask = (1usize << n) - 1;
    let mut v = usize::from(*b.get(at)?) & mask;
    let mut i = at + 1;
    if v < mask {
        return Some((v, i));
    }
    let mut shift = 0;
    loop {
        let byte = *b.get(i)?;
        i += 1;
        if shift > 28 {
            return None;
        }
        v += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some((v, i));
        }
    }
}

/// An HPACK string literal at `at` (§5.2): (Huffman-coded, bytes, end).
fn string(b: &[u8], at: usize) -> Option<(bool, &[u8], usize)> {
    let huffman = *b.get(at)? & 0x80 != 0;
    let (len, start) = int(b, at, 7)?;
    let end = start.checked_add(len)?;
    Some((huffman, b.get(start..end)?, end))
}

/// One field representation of a header block (RFC 7541 §6).
struct Rep {
    start: usize,
    /// Where the name ends (for a literal) or the representation does.
    name_end: usize,
    end: usize,
    /// The type bits of a literal (0x40, 0x00 or 0x10), `None` otherwise.
    literal: Option<u8>,
    /// An `:authority` literal that can be renamed.
    authority: bool,
    /// A pseudo-header field by its static name (`:authority` … `:status`,
    /// static indices 1 to 14) or a plain literal name starting with `:`.
    pseudo: bool,
}

/// The representations of a block, or `None` if it is not valid HPACK.
fn parse_block(b: &[u8]) -> Option<Vec<Rep>> {
    let mut reps = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let first = b[i];
        let prefix = match first {
            f if f & 0x80 != 0 => 7, // indexed field
            f if f & 0xc0 == 0x40 => 6,
            f if f & 0xe0 == 0x20 => 5, // table size update
            _ => 4,
        };
        let (index, mut at) = int(b, i, prefix)?;
        let static_pseudo = (1..=14).contains(&index);
        if prefix == 7 || prefix == 5 {
            reps.push(Rep {
                start: i,
                name_end: at,
                end: at,
                literal: None,
                authority: false,
                pseudo: prefix == 7 && static_pseudo,
            });
            i = at;
            continue;
        }
        let (mut authority, mut pseudo) = (index == 1, static_pseudo);
        if index == 0 {
            let (huffman, name, end) = string(b, at)?;
            authority = !huffman && name == AUTHORITY;
            pseudo = !huffman && name.first() == Some(&b':');
            at = end;
        }
        let (_, _, end) = string(b, at)?;
        reps.push(Rep {
            start: i,
            name_end: at,
            end,
            literal: Some(first & !(((1u16 << prefix) - 1) as u8)),
            authority,
            pseudo,
        });
        i = end;
    }
    Some(reps)
}

/// The header block with its `:authority` literal renamed (module doc), or
/// `None` when there is nothing to rename or the block is not valid HPACK.
/// A field is renamed only when no pseudo-header follows it in the block
/// (HTTP/2 puts pseudo-headers first, and h2 refuses one after an ordinary
/// field): Go sends `:authority` last of them; clients that send it before
/// `:path` (h2's own, with a valid authority) are left as they are.
pub(crate) fn rewrite_block(b: &[u8]) -> Option<Vec<u8>> {
    let reps = parse_block(b)?;
    let last_pseudo = reps.iter().rposition(|r| r.pseudo);
    let mut out = Vec::with_capacity(b.len() + 2 * NEW_NAME.len());
    let mut changed = false;
    for (n, r) in reps.iter().enumerate() {
        let kind = r
            .literal
            .filter(|_| r.authority && last_pseudo.is_none_or(|l| l <= n));
        match kind {
            Some(kind) => {
                out.push(kind);
                out.push(NEW_NAME.len() as u8);
                out.extend_from_slice(NEW_NAME);
                out.extend_from_slice(&b[r.name_end..r.end]);
                changed = true;
            }
            None => out.extend_from_slice(&b[r.start..r.end]),
        }
    }
    changed.then_some(out)
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        loop {
            if me.sent < me.out.len() {
                let n = buf.remaining().min(me.out.len() - me.sent);
                buf.put_slice(&me.out[me.sent..me.sent + n]);
                me.sent += n;
                if me.sent == me.out.len() {
                    me.out.clear();
                    me.sent = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if me.eof {
                // What was held back (a cut-off frame) goes on as it is.
                me.out.append(&mut me.raw);
                if me.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut me.io).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                me.eof = true;
                continue;
            }
            me.raw.extend_from_slice(rb.filled());
            me.process();
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<IO>
{
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A literal with incremental indexing, name `:authority` by static
    /// index 1, raw value `v`.
    fn authority_literal(v: &[u8]) -> Vec<u8> {
        let mut b = vec![0x41, v.len() as u8];
        b.extend_from_slice(v);
        b
    }

    #[test]
    fn renames_authority_keeps_everything_else() {
        // As Go sends it: :method POST and :path / (static), :authority
        // literal last of the pseudo-headers, then a literal-name field, a
        // never-indexed field and an indexed dynamic entry.
        let mut block = vec![0x83, 0x84];
        block.extend(authority_literal(b"http://127.0.0.1:2379"));
        block.extend([0x00, 0x01, b'k', 0x01, b'v']);
        block.extend([0x1f, 0x10, 0x02, b'a', b'b']);
        block.push(0xbe);
        let out = rewrite_block(&block).expect("rewritten");
        let mut want = vec![0x83, 0x84, 0x40, 0x0a];
        want.extend_from_slice(NEW_NAME);
        want.extend([21]);
        want.extend_from_slice(b"http://127.0.0.1:2379");
        want.extend([0x00, 0x01, b'k', 0x01, b'v']);
        want.extend([0x1f, 0x10, 0x02, b'a', b'b', 0xbe]);
        assert_eq!(out, want);
        assert_eq!(NEW_NAME.len(), AUTHORITY.len(), "HPACK entry sizes");
    }

    #[test]
    fn authority_before_another_pseudo_header_stays() {
        // h2's order: :method, :scheme, :authority, :path.
        let mut block = vec![0x83, 0x86];
        block.extend(authority_literal(b"127.0.0.1:2379"));
        block.extend([0x44, 0x01, b'/']);
        assert_eq!(rewrite_block(&block), None);
        // A plain literal name `:authority` is renamed too.
        let mut plain = vec![0x83, 0x00, 0x0a];
        plain.extend_from_slice(AUTHORITY);
        plain.extend([0x01, b'x']);
        let mut want = vec![0x83, 0x00, 0x0a];
        want.extend_from_slice(NEW_NAME);
        want.extend([0x01, b'x']);
        assert_eq!(rewrite_block(&plain), Some(want));
    }

    #[test]
    fn leaves_blocks_without_authority_or_broken() {
        assert_eq!(rewrite_block(&[0x83, 0x86, 0x44, 0x01, b'/']), None);
        // A value length running past the end.
        assert_eq!(rewrite_block(&[0x41, 0x05, b'a']), None);
        // An integer with too many continuation bytes.
        assert_eq!(
            rewrite_block(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            None
        );
    }

    #[test]
    fn large_integers() {
        assert_eq!(int(&[0x1f, 0x9a, 0x0a], 0, 5), Some((1337, 3)));
        assert_eq!(int(&[0x0a], 0, 5), Some((10, 1)));
    }

    fn frame(ty: u8, flags: u8, stream: u8, payload: &[u8]) -> Vec<u8> {
        let l = payload.len();
        let mut f = vec![
            (l >> 16) as u8,
            (l >> 8) as u8,
            l as u8,
            ty,
            flags,
            0,
            0,
            0,
            stream,
        ];
        f.extend_from_slice(payload);
        f
    }

    async fn through(input: Vec<u8>) -> Vec<u8> {
        let mut fix = AuthorityFix::new(&input[..]);
        let mut got = Vec::new();
        fix.read_to_end(&mut got).await.expect("read");
        got
    }

    #[tokio::test]
    async fn stream_rewrites_split_blocks_and_passes_the_rest() {
        let block = authority_literal(b"http://x:1");
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                             // HEADERS (padded, 2 bytes of padding) + CONTINUATION.
        let mut p = vec![2, 0x83];
        p.extend_from_slice(&block[..3]);
        p.extend([0, 0]);
        input.extend(frame(HEADERS, PADDED | END_STREAM, 1, &p));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[3..]));
        input.extend(frame(0x0, 0x1, 1, b"data"));
        let mut want = PREFACE.to_vec();
        want.extend(frame(0x4, 0, 0, &[]));
        let mut fixed = vec![0x83];
        fixed.extend(rewrite_block(&block).expect("rewritten"));
        want.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &fixed));
        want.extend(frame(0x0, 0x1, 1, b"data"));
        assert_eq!(through(input).await, want);
    }

    /// Hands out its bytes one at a time, to cut every frame everywhere.
    struct Trickle(Vec<u8>, usize);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some(b) = self.0.get(self.1).copied() {
                buf.put_slice(&[b]);
                self.1 += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn byte_by_byte_gives_the_same_as_whole() {
        let mut input = PREFACE.to_vec();
        for stream in [1u8, 3, 5] {
            let mut block = vec![0x83, 0x84];
            block.extend(authority_literal(b"http://127.0.0.1:2379"));
            input.extend(frame(HEADERS, END_HEADERS, stream, &block));
            input.extend(frame(0x0, 0x1, stream, &[stream; 40]));
        }
        let whole = through(input.clone()).await;
        assert_ne!(whole, input, "rewritten");
        let mut fix = AuthorityFix::new(Trickle(input, 0));
        let mut got = Vec::new();
        fix.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, whole);
    }

    #[tokio::test]
    async fn not_http2_passes_unchanged() {
        let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(through(garbage.clone()).await, garbage);
        let mut cut = PREFACE.to_vec();
        cut.extend(&frame(HEADERS, END_HEADERS, 1, &[0x83, 0x41])[..11]);
        assert_eq!(through(cut.clone()).await, cut);
    }
}
