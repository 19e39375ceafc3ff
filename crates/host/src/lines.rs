//! Reading a plugin's output: bounded lines, and the tail kept for error messages.

use std::collections::VecDeque;
use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One read from a line-oriented pipe.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// A complete line, without its newline.
    Line(Vec<u8>),
    /// `limit` bytes arrived without a newline; the rest of the line is still unread.
    TooLong(Vec<u8>),
    /// The pipe closed; holds an unterminated last line, if any.
    Eof(Vec<u8>),
}

/// Reads one line of at most `limit` bytes; never buffers more than that.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> io::Result<Read> {
    let mut line = Vec::new();
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(Read::Eof(line));
        }
        let room = limit - line.len();
        // With the line full, only its newline may follow.
        match buffer.iter().take(room + 1).position(|&b| b == b'\n') {
            Some(newline) => {
                line.extend_from_slice(&buffer[..newline]);
                reader.consume(newline + 1);
                return Ok(Read::Line(line));
            }
            None if room == 0 => return Ok(Read::TooLong(line)),
            None => {
                let take = buffer.len().min(room);
                line.extend_from_slice(&buffer[..take]);
                reader.consume(take);
            }
        }
    }
}

/// Text for a human: lossy UTF-8, at most `max` characters, with `...` when cut.
pub(crate) fn excerpt(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(max).collect();
    if text.chars().nth(max).is_some() {
        out.push_str("...");
    }
    out
}

/// The last lines a plugin wrote on stderr, bounded in lines and bytes.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    const MAX_LINES: usize = 20;
    const MAX_BYTES: usize = 4096;

    pub(crate) fn push(&mut self, line: &[u8]) {
        let line = excerpt(line, 512);
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.lines.len() > Self::MAX_LINES || self.bytes > Self::MAX_BYTES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    pub(crate) fn text(&self) -> String {
        self.lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(input: &[u8], limit: usize) -> Vec<Read> {
        let mut reader = tokio::io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            let read = read_line(&mut reader, limit).await.unwrap();
            let eof = matches!(read, Read::Eof(_));
            out.push(read);
            if eof {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn splits_lines_and_bounds_long_ones() {
        let reads = all(b"ab\ncdefgh\n\nxy", 4).await;
        assert_eq!(
            reads,
            [
                Read::Line(b"ab".to_vec()),
                Read::TooLong(b"cdef".to_vec()),
                Read::Line(b"gh".to_vec()),
                Read::Line(b"".to_vec()),
                Read::Eof(b"xy".to_vec()),
            ]
        );
        // A line of exactly `limit` bytes followed by its newline is a line.
        assert_eq!(all(b"abcd\n", 4).await[0], Read::Line(b"abcd".to_vec()));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut tail = Tail::default();
        for i in 0..30 {
            tail.push(format!("line {i}").as_bytes());
        }
        let text = tail.text();
        assert!(text.starts_with("line 10\n"), "{text}");
        assert!(text.ends_with("line 29"));
        let mut big = Tail::default();
        for _ in 0..100 {
            big.push(&[b'x'; 600]);
        }
        assert!(big.text().len() <= Tail::MAX_BYTES + Tail::MAX_LINES);
    }

    #[test]
    fn excerpts_are_cut_and_lossy() {
        assert_eq!(excerpt(b"hello", 3), "hel...");
        assert_eq!(excerpt(b"hi", 3), "hi");
        assert_eq!(excerpt(&[0xff, b'a'], 3), "\u{fffd}a");
    }
}
