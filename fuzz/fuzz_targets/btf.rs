//! The BTF reader walks a binary blob; it must never panic or loop on a malformed one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcptrace_agent::kernel::btf::Btf;

fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = Btf::parse(data) {
        let _ = btf.member_offset("sock", "sk_err");
    }
});
