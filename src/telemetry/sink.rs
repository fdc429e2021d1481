//! The log's way out: every thread appends whole lines to one shared buffer, and one writer
//! thread takes the buffer away and writes it in one call, so no request task ever waits on
//! a write or wakes a thread per line.
//!
//! ```text
//! append(line) ─▶ buffer (mutex, a memcpy) ── first line of a batch, or BATCH_BYTES: wake
//!   writer thread ─▶ lingers LINGER for more ─▶ swaps the buffer ─▶ write_all + flush
//! buffer at LIMIT_BYTES ─▶ the line is dropped and counted (iotgate_log_lines_dropped_total)
//! guard dropped (exit) ─▶ the writer writes what is left and stops
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long the writer waits for more lines after the first of a batch.
const LINGER: Duration = Duration::from_millis(5);
/// A batch this big is written without waiting out [`LINGER`].
const BATCH_BYTES: usize = 256 << 10;

/// The shared buffer and its writer's signal.
#[derive(Debug)]
pub(crate) struct Sink {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: Arc<AtomicU64>,
    limit: usize,
}

#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    closed: bool,
}

/// Stops the writer thread once everything appended before the drop is written.
#[derive(Debug)]
pub(crate) struct Guard {
    sink: Arc<Sink>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    /// A sink holding at most `limit` unwritten bytes, written to `out` by a thread of its
    /// own; lines it drops are counted into `dropped`.
    pub(crate) fn start(
        limit: usize,
        out: impl Write + Send + 'static,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<(Arc<Sink>, Guard)> {
        let sink = Arc::new(Sink {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            dropped,
            limit,
        });
        let writer = sink.clone();
        let thread = std::thread::Builder::new()
            .name("iotgate-log".into())
            .spawn(move || writer.write_out(out))?;
        let guard = Guard {
            sink: sink.clone(),
            thread: Some(thread),
        };
        Ok((sink, guard))
    }

    /// Appends one or more whole lines, or drops them (counted) when the buffer is full.
    pub(crate) fn append(&self, lines: &[u8]) {
        let mut pending = self.lock();
        let before = pending.buf.len();
        // past the limit, or after the writer stopped (a line logged during exit): counted
        if pending.closed || before + lines.len() > self.limit {
            drop(pending);
            let count = lines.iter().filter(|&&b| b == b'\n').count().max(1);
            self.dropped.fetch_add(count as u64, Ordering::Relaxed);
            return;
        }
        pending.buf.extend_from_slice(lines);
        let crossed = before < BATCH_BYTES && pending.buf.len() >= BATCH_BYTES;
        drop(pending);
        if before == 0 || crossed {
            self.wake.notify_one();
        }
    }

    /// Lines dropped because the writer fell behind.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // a poisoned buffer is still a buffer of whole lines
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer thread: waits for a batch, takes it, writes it; ends once closed and
    /// empty. A failing output drops its batch, counted as dropped lines.
    fn write_out(&self, mut out: impl Write) {
        let mut batch = Vec::new();
        let mut pending = self.lock();
        loop {
            while pending.buf.is_empty() && !pending.closed {
                pending = self.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
            }
            if pending.buf.is_empty() {
                return;
            }
            if pending.buf.len() < BATCH_BYTES && !pending.closed {
                pending = self
                    .wake
                    .wait_timeout(pending, LINGER)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::swap(&mut pending.buf, &mut batch);
            drop(pending);
            if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
                // nowhere to report it but the count
                let lines = batch.iter().filter(|&&b| b == b'\n').count();
                self.dropped.fetch_add(lines as u64, Ordering::Relaxed);
            }
            batch.clear();
            batch.shrink_to(BATCH_BYTES * 4);
            pending = self.lock();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.sink.lock().closed = true;
        self.sink.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The sink as a `tracing-subscriber` writer: each formatted event is one append.
#[derive(Debug, Clone)]
pub(crate) struct MakeSink(pub(crate) Arc<Sink>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeSink {
    type Writer = &'a Sink;

    fn make_writer(&'a self) -> Self::Writer {
        &self.0
    }
}

impl Write for &Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An output tests can read back.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Shared(pub(crate) Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_from_every_thread_is_written_whole_before_the_guard_returns() {
        let out = Shared::default();
        let (sink, guard) = Sink::start(64 << 20, out.clone(), Arc::default()).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let sink = &sink;
                s.spawn(move || {
                    for i in 0..5_000 {
                        sink.append(format!("thread {t} line {i}\n").as_bytes());
                    }
                });
            }
        });
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20_000);
        for t in 0..4 {
            let mine: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> =
                (0..5_000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, expected, "thread {t}'s lines whole and in order");
        }
        assert_eq!(sink.dropped(), 0);
    }

    #[test]
    fn a_line_after_the_writer_stopped_is_counted_not_silently_lost() {
        let out = Shared::default();
        let (sink, guard) = Sink::start(1 << 20, out.clone(), Arc::default()).unwrap();
        sink.append(b"before\n");
        drop(guard);
        sink.append(b"after\n");
        assert_eq!(
            String::from_utf8(out.0.lock().unwrap().clone()).unwrap(),
            "before\n"
        );
        assert_eq!(sink.dropped(), 1);
    }

    /// An output that blocks until the test lets it go.
    struct Blocked(std::sync::mpsc::Receiver<()>, Shared);

    impl Write for Blocked {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            self.1.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_output_drops_and_counts_lines_instead_of_blocking_the_caller() {
        let (release, stuck) = std::sync::mpsc::channel();
        let out = Shared::default();
        let (sink, guard) =
            Sink::start(1_000, Blocked(stuck, out.clone()), Arc::default()).unwrap();
        sink.append(b"first\n");
        // the writer takes "first" and blocks on it; the next lines fill the limit
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..200 {
            sink.append(b"0123456789\n");
        }
        assert!(sink.dropped() > 100, "dropped {}", sink.dropped());
        for _ in 0..10 {
            let _ = release.send(());
        }
        drop(release);
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("first\n"));
        assert_eq!(
            text.lines().count() as u64 + sink.dropped(),
            201,
            "every line written or counted"
        );
    }
}
