//! One HTTP/1.1 `GET` over any byte stream (plain TCP for the kubelet's read-only port,
//! TLS for the API server), with a body reader that undoes chunked encoding as it reads:
//! the API server's watch answers are an endless chunked stream of JSON lines.
use std::io::{BufRead, BufReader, Read, Write};

use anyhow::{bail, Context as _, Result};

/// Longest status line or header accepted; a longer one is not an HTTP server we know.
const MAX_HEADER_LINE: u64 = 16 << 10;

pub struct Response<S: Read> {
    pub status: u16,
    pub body: Body<S>,
}

/// Send `GET path` with `headers` (and `Connection: close`: one request per stream) and
/// read the status line and headers.
pub fn get<S: Read + Write>(
    mut stream: S,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response<S>> {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut reader = BufReader::new(stream);
    let status_line = read_line(&mut reader)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {status_line:?}"))?;
    let mut framing = Framing::UntilClose;
    loop {
        let line = read_line(&mut reader)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            framing = Framing::Chunked { left: 0 };
        } else if name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked { .. })
        {
            framing = Framing::Length(value.parse().context("bad Content-Length")?);
        }
    }
    Ok(Response {
        status,
        body: Body { reader, framing },
    })
}

/// A response body: `Read` gives the payload without the chunk framing, and ends where
/// the body ends.
pub struct Body<S: Read> {
    reader: BufReader<S>,
    framing: Framing,
}

enum Framing {
    /// `left` bytes of the current chunk remain; 0 means a chunk header comes next.
    Chunked {
        left: u64,
    },
    Length(u64),
    UntilClose,
    Done,
}

impl<S: Read> Read for Body<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let want = match self.framing {
                Framing::Done => return Ok(0),
                Framing::UntilClose => return self.reader.read(buf),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    continue;
                }
                Framing::Length(left) | Framing::Chunked { left } if left > 0 => left,
                Framing::Chunked { .. } => {
                    self.next_chunk().map_err(std::io::Error::other)?;
                    continue;
                }
                Framing::Length(_) => unreachable!("zero handled above"),
            };
            let n = buf.len().min(usize::try_from(want).unwrap_or(usize::MAX));
            let got = self.reader.read(&mut buf[..n])?;
            if got == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            match &mut self.framing {
                Framing::Length(left) | Framing::Chunked { left } => *left -= got as u64,
                _ => {}
            }
            if let Framing::Chunked { left: 0 } = self.framing {
                // The CRLF that closes every chunk's data.
                read_line(&mut self.reader).map_err(std::io::Error::other)?;
            }
            return Ok(got);
        }
    }
}

impl<S: Read> Body<S> {
    /// Read a chunk-size line; the zero-size chunk ends the body.
    fn next_chunk(&mut self) -> Result<()> {
        let line = read_line(&mut self.reader)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16)
            .with_context(|| format!("bad chunk size line {line:?}"))?;
        self.framing = if size == 0 {
            Framing::Done
        } else {
            Framing::Chunked { left: size }
        };
        Ok(())
    }

    /// The whole body, refused beyond `max` bytes.
    pub fn read_all(mut self, max: usize) -> Result<Vec<u8>> {
        let mut all = Vec::new();
        (&mut self).take(max as u64 + 1).read_to_end(&mut all)?;
        if all.len() > max {
            bail!("answer larger than {max} bytes");
        }
        Ok(all)
    }
}

/// One CRLF- (or LF-) terminated line, without its terminator.
fn read_line(reader: &mut impl BufRead) -> Result<String> {
    let mut line = Vec::new();
    reader.take(MAX_HEADER_LINE).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        bail!("connection closed or line longer than {MAX_HEADER_LINE} bytes in the HTTP framing");
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A canned answer as the stream; what the client writes goes nowhere.
    struct Canned(std::io::Cursor<Vec<u8>>);
    impl Read for Canned {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Canned {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn answer(raw: &str) -> Response<Canned> {
        get(
            Canned(std::io::Cursor::new(raw.as_bytes().to_vec())),
            "h",
            "/",
            &[],
        )
        .unwrap()
    }

    #[test]
    fn chunked_bodies_are_joined_and_stop_at_the_last_chunk() {
        let r = answer(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\ntrailing junk",
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body.read_all(100).unwrap(), b"abcde");
    }

    #[test]
    fn lines_span_chunks() {
        let r = answer(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n6\r\n:1}\n{}\r\n1\r\n\n\r\n0\r\n\r\n",
        );
        let lines: Vec<String> = BufReader::new(r.body).lines().map(Result::unwrap).collect();
        assert_eq!(lines, ["{\"a\":1}", "{}"]);
    }

    #[test]
    fn content_length_and_limits() {
        let r = answer("HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!extra");
        assert_eq!(r.status, 404);
        assert_eq!(r.body.read_all(100).unwrap(), b"nope!");
        let r = answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n12345");
        assert!(r.body.read_all(4).is_err());
        let r = answer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        assert!(r.body.read_all(100).is_err());
        let r = answer("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort");
        assert!(
            r.body.read_all(100).is_err(),
            "a body cut short is an error"
        );
    }
}
