//! Tracepoint format files decide which offsets the eBPF programs read: whatever the
//! text, the parser must either refuse it or produce offsets inside the record.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcptrace_agent::kernel::format::{layout, parse_fields, wants, Carries, SET_STATE_EXTRA};
use tcptrace_common::FIELD_ABSENT;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(fields) = parse_fields(text) else {
        return;
    };
    let wants = wants(Carries::SocketAndAddresses, &SET_STATE_EXTRA);
    if let Ok(l) = layout(&fields, &wants, true) {
        assert_ne!(l.skaddr, FIELD_ABSENT, "a required field left absent");
        assert_ne!(l.newstate, FIELD_ABSENT, "a required field left absent");
    }
});
