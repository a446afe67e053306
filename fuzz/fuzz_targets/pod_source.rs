//! The pod-name sources read HTTP answers from the kubelet or the API server: status line,
//! headers, chunked or sized bodies, pod lists and watch events. A malformed or hostile
//! answer must end in an error, never a panic, a hang or an unbounded buffer.
#![no_main]
use std::io::{BufRead, BufReader, Cursor, Read, Write};

use libfuzzer_sys::fuzz_target;
use tcptrace_agent::k8s::{api, http_get, pod_names};

/// The fuzz input as the server's bytes; what the client sends goes nowhere.
struct Server(Cursor<Vec<u8>>);

impl Read for Server {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Server {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const LIMIT: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    // The input as a body on its own (framing aside): a pod list, or watch lines.
    let names = pod_names::Shared::default();
    for line in data.split(|b| *b == b'\n') {
        let _ = api::apply_line(line, &names);
    }
    let _ = pod_names::parse_list(data);
    let Ok(response) = http_get::get(Server(Cursor::new(data.to_vec())), "h", "/", &[]) else {
        return;
    };
    // Undoing the framing never makes a body longer than what was sent.
    let mut body = Vec::new();
    let _ = BufReader::new(response.body)
        .take(LIMIT as u64)
        .read_to_end(&mut body);
    assert!(body.len() <= data.len());
    let names = pod_names::Shared::default();
    for line in body.split(|b| *b == b'\n') {
        let _ = api::apply_line(line, &names);
    }
    if let Ok(list) = pod_names::parse_list(&body) {
        names
            .write()
            .unwrap()
            .replace_all(list.items, std::time::Instant::now());
    }
    // And the line reader the watch uses.
    let reader = http_get::get(Server(Cursor::new(data.to_vec())), "h", "/", &[]);
    if let Ok(r) = reader {
        for line in BufReader::new(r.body).take(LIMIT as u64).lines() {
            if line.is_err() {
                break;
            }
        }
    }
});
