//! The log pipeline of one try: reads a process's stdout and stderr in chunks (one std thread
//! each), writes whole lines to the capped log file through one buffered writer, splits a line with
//! no newline at `max_line_bytes`, and keeps the last non-empty stdout line (the XCom) up to
//! `max_xcom_bytes` while counting its full size.
//!
//! Every log line starts with the time it was read, as Airflow's task logs do
//! (`[2026-12-03T09:47:35.123+0000] text`): one stamp per chunk read, shared by the lines in it.
//!
//! Memory is bounded whatever the process writes: one read buffer and one partial line per stream,
//! and two copies of at most `max_xcom_bytes` for the last line.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::sync::Mutex;

/// Bytes read from a pipe at a time.
const CHUNK: usize = 64 * 1024;

/// A log line longer than this is split into lines of this size.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_log_bytes: u64,
    pub max_line_bytes: usize,
    pub max_xcom_bytes: u64,
}

/// What the pipeline saw on stdout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastLine {
    /// The last non-empty stdout line, cut to `max_xcom_bytes`.
    pub text: Option<String>,
    /// Its full size in bytes, even past the cut.
    pub bytes: u64,
}

/// Reads both pipes to their end, writing the log; returns the last stdout line.
///
/// Each of `masks` (secrets, longest first) is replaced by `***` in every line, as Airflow's
/// secrets masker does; the last line (the XCom) is kept as written, as Airflow keeps XComs.
pub fn capture(stdout: File, stderr: File, log: File, limits: Limits, masks: Vec<String>) -> LastLine {
    let sink = Mutex::new(Sink {
        masks,
        out: BufWriter::with_capacity(CHUNK, log),
        written: 0,
        cap: limits.max_log_bytes,
        truncated: false,
        stamp: String::new(),
    });
    let mut last = Tracker::new(limits.max_xcom_bytes);
    std::thread::scope(|scope| {
        let sink = &sink;
        scope.spawn(move || pump(stderr, sink, limits.max_line_bytes, None));
        pump(stdout, sink, limits.max_line_bytes, Some(&mut last));
    });
    let mut sink = sink.into_inner().unwrap_or_else(|p| p.into_inner());
    let _ = sink.out.flush();
    last.finish()
}

/// Copies one pipe into the sink, line by line, until it closes.
fn pump(mut pipe: File, sink: &Mutex<Sink>, line_cap: usize, mut last: Option<&mut Tracker>) {
    let line_cap = line_cap.max(1);
    let mut buf = vec![0u8; CHUNK];
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        if let Some(t) = last.as_deref_mut() {
            t.feed(chunk);
        }
        let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
        sink.stamp = stamp();
        let mut rest = chunk;
        while !rest.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    push(&mut partial, &rest[..i], true, line_cap, &mut sink);
                    rest = &rest[i + 1..];
                }
                None => {
                    push(&mut partial, rest, false, line_cap, &mut sink);
                    rest = &[];
                }
            }
        }
        // Flushed per chunk read, so the log follows the task live.
        sink.flush();
    }
    let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
    if !partial.is_empty() {
        sink.line(&partial);
    }
    sink.flush();
}

/// Adds `bytes` to the line being built; emits lines of `cap` bytes while it is too long, and the
/// rest when `ends_line`.
fn push(partial: &mut Vec<u8>, mut bytes: &[u8], ends_line: bool, cap: usize, sink: &mut Sink) {
    while partial.len() + bytes.len() > cap {
        let take = cap - partial.len();
        if partial.is_empty() {
            sink.line(&bytes[..take]);
        } else {
            partial.extend_from_slice(&bytes[..take]);
            sink.line(partial);
            partial.clear();
        }
        bytes = &bytes[take..];
    }
    if ends_line {
        if partial.is_empty() {
            sink.line(bytes);
        } else {
            partial.extend_from_slice(bytes);
            sink.line(partial);
            partial.clear();
        }
    } else {
        partial.extend_from_slice(bytes);
    }
}

/// `[2026-12-03T09:47:35.123+0000] `: the prefix of every log line, Airflow's time format.
pub fn stamp() -> String {
    stamp_at(chrono::Utc::now())
}

/// The stamp of `at` (written out by hand: `format` parses its pattern on every call, and every
/// line of every log is stamped).
pub fn stamp_at(at: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::{Datelike as _, Timelike as _};
    format!(
        "[{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}+0000] ",
        at.year(),
        at.month(),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.timestamp_subsec_millis().min(999)
    )
}

/// A log line without its stamp (for a console that shows its own context); a line without one
/// as it is.
pub fn unstamped(line: &str) -> &str {
    let b = line.as_bytes();
    let stamped = b.len() >= 31 && b[0] == b'[' && b[20] == b'.' && b[29] == b']' && b[30] == b' ';
    if stamped { &line[31..] } else { line }
}

/// The log file up to its cap, then one marker line.
struct Sink {
    masks: Vec<String>,
    out: BufWriter<File>,
    written: u64,
    cap: u64,
    truncated: bool,
    /// The prefix of the lines being written (the time their chunk was read).
    stamp: String,
}

impl Sink {
    fn line(&mut self, line: &[u8]) {
        if self.truncated {
            return;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let masked;
        let line = if self.masks.is_empty() {
            line
        } else {
            masked = super::mask(&String::from_utf8_lossy(line), &self.masks);
            masked.as_bytes()
        };
        let stamp = self.stamp.len() as u64;
        let need = stamp + line.len() as u64 + 1;
        if self.written + need > self.cap {
            // The head that fits is kept, then the marker.
            let room = self.cap.saturating_sub(self.written).saturating_sub(stamp + 1) as usize;
            if room > 0 {
                let _ = self.out.write_all(self.stamp.as_bytes());
                self.text(&line[..room.min(line.len())]);
                let _ = self.out.write_all(b"\n");
            }
            self.truncated = true;
            let _ = writeln!(self.out, "{}[rhaiflow] log truncated at {} bytes", self.stamp, self.cap);
            return;
        }
        self.written += need;
        let _ = self.out.write_all(self.stamp.as_bytes());
        self.text(line);
        let _ = self.out.write_all(b"\n");
    }

    /// Text as it is when it is UTF-8, else lossily (a bad byte must not stop the pipeline).
    fn text(&mut self, bytes: &[u8]) {
        let _ = match std::str::from_utf8(bytes) {
            Ok(_) => self.out.write_all(bytes),
            Err(_) => self.out.write_all(String::from_utf8_lossy(bytes).as_bytes()),
        };
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

/// Follows the last non-empty stdout line without copying every line: per chunk, only the last
/// non-blank line in it is kept.
struct Tracker {
    keep: usize,
    current: Vec<u8>,
    current_bytes: u64,
    last: Vec<u8>,
    last_bytes: u64,
    seen: bool,
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

impl Tracker {
    fn new(max_xcom_bytes: u64) -> Tracker {
        Tracker {
            keep: usize::try_from(max_xcom_bytes).unwrap_or(usize::MAX),
            current: Vec::new(),
            current_bytes: 0,
            last: Vec::new(),
            last_bytes: 0,
            seen: false,
        }
    }

    fn extend(&mut self, bytes: &[u8]) {
        let room = self.keep.saturating_sub(self.current.len());
        self.current.extend_from_slice(&bytes[..room.min(bytes.len())]);
        self.current_bytes += bytes.len() as u64;
    }

    /// The current line ended: it becomes the last one unless it is blank.
    fn end_line(&mut self) {
        let over = self.current_bytes > self.current.len() as u64;
        if over || !is_blank(&self.current) {
            std::mem::swap(&mut self.last, &mut self.current);
            self.last_bytes = self.current_bytes;
            self.seen = true;
        }
        self.current.clear();
        self.current_bytes = 0;
    }

    fn set_last(&mut self, line: &[u8]) {
        self.last.clear();
        self.last.extend_from_slice(&line[..self.keep.min(line.len())]);
        self.last_bytes = line.len() as u64;
        self.seen = true;
    }

    fn feed(&mut self, chunk: &[u8]) {
        let Some(last_nl) = memchr::memrchr(b'\n', chunk) else {
            self.extend(chunk);
            return;
        };
        let first_nl = memchr::memchr(b'\n', chunk).unwrap_or(last_nl);
        self.extend(&chunk[..first_nl]);
        self.end_line();
        // Whole lines inside the chunk: the last non-blank one, found from the end.
        let mut end = last_nl;
        while end > first_nl {
            let start = memchr::memrchr(b'\n', &chunk[first_nl + 1..end]).map_or(first_nl + 1, |i| first_nl + 2 + i);
            if !is_blank(&chunk[start..end]) {
                self.set_last(&chunk[start..end]);
                break;
            }
            end = start - 1;
        }
        self.extend(&chunk[last_nl + 1..]);
    }

    fn finish(mut self) -> LastLine {
        if self.current_bytes > 0 {
            self.end_line();
        }
        if !self.seen {
            return LastLine::default();
        }
        let mut bytes = self.last_bytes;
        let mut text = String::from_utf8_lossy(&self.last).into_owned();
        if text.ends_with('\r') && bytes == self.last.len() as u64 {
            text.pop();
            bytes -= 1;
        }
        LastLine { text: Some(text), bytes }
    }
}

#[cfg(test)]
mod stamp_tests {
    #[test]
    fn the_hand_written_stamp_is_chronos_format() {
        for text in ["2026-12-03T09:47:35.123Z", "0999-01-02T03:04:05.006Z", "2024-02-29T23:59:59.999Z"] {
            let at = chrono::DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&chrono::Utc);
            assert_eq!(super::stamp_at(at), at.format("[%Y-%m-%dT%H:%M:%S%.3f%z] ").to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_comes_off_whole() {
        let line = format!("{}hello", stamp());
        assert_eq!(unstamped(&line), "hello");
        assert_eq!(unstamped("[not a stamp] hello"), "[not a stamp] hello");
        assert_eq!(unstamped("short"), "short");
    }

    fn tracked(chunks: &[&[u8]], keep: u64) -> LastLine {
        let mut t = Tracker::new(keep);
        for c in chunks {
            t.feed(c);
        }
        t.finish()
    }

    #[test]
    fn last_non_blank_line_across_chunks() {
        assert_eq!(tracked(&[b"a\nbb\n\n  \n"], 100).text.as_deref(), Some("bb"));
        assert_eq!(tracked(&[b"a\nfir", b"st\n", b"\n"], 100).text.as_deref(), Some("first"));
        assert_eq!(tracked(&[b"x\ny"], 100).text.as_deref(), Some("y"));
        assert_eq!(tracked(&[b"x\r\n"], 100).text.as_deref(), Some("x"));
        assert_eq!(tracked(&[b"\n \n"], 100), LastLine::default());
        let big = tracked(&[b"0123456789", b"0123456789\n"], 4);
        assert_eq!((big.text.as_deref(), big.bytes), (Some("0123"), 20));
    }
}
