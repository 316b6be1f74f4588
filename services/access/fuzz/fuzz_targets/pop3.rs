//! A whole POP3 session with the fuzzer's bytes as the client's input.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    posthorn_access::fuzzing::pop3_session(data);
});
