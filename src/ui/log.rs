//! The `tracing` writer that sends log events through the [`Ui`], so logs
//! land above the progress bars instead of through them.
//!
//! Each event is buffered whole and handed to the `Ui` in one piece when
//! tracing drops the writer, so a multi-line event is never split by another
//! host's output. Filtering and formatting stay with `tracing-subscriber`.

use std::io;

use tracing_subscriber::fmt::MakeWriter;

use super::{Stream, Ui};

/// Above this many buffered bytes an event's complete lines go out early,
/// so one enormous event cannot grow memory without bound.
const MAX_BUFFERED: usize = 64 * 1024;

/// Hands out one [`LogWriter`] per event.
pub(super) struct MakeLogWriter {
    pub(super) ui: Ui,
}

impl<'a> MakeWriter<'a> for MakeLogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter {
            ui: self.ui.clone(),
            buf: Vec::new(),
        }
    }
}

/// Collects one event; emits it on drop.
pub(super) struct LogWriter {
    ui: Ui,
    buf: Vec<u8>,
}

impl LogWriter {
    /// Emit everything up to the last newline, or everything when a single
    /// line alone is over the limit.
    fn emit_complete_lines(&mut self) {
        let end = match self.buf.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => self.buf.len(),
        };
        let rest = self.buf.split_off(end);
        self.emit_buffer();
        self.buf = rest;
    }

    fn emit_buffer(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        self.ui.emit(Stream::Stderr, text);
        self.buf.clear();
    }
}

impl io::Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() > MAX_BUFFERED {
            self.emit_complete_lines();
        }
        Ok(data.len())
    }

    /// Nothing: flushing mid-event would split it. The event goes out whole
    /// on drop.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.emit_buffer();
    }
}
