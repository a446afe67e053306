//! The metrics endpoint's request parser sees bytes from anyone who can reach the port.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcptrace_agent::http::{parse_head, Parsed};

fuzz_target!(|data: &[u8]| {
    match parse_head(data, 8192) {
        Parsed::Request { path, .. } => {
            assert!(path.starts_with('/'), "routed a path that is not absolute: {path:?}");
            assert!(!path.contains('?'), "query string leaked into the path");
        }
        Parsed::Reject(status) => assert!((400..=499).contains(&status)),
        Parsed::Incomplete => assert!(data.len() < 8192, "incomplete beyond the head limit"),
    }
});
