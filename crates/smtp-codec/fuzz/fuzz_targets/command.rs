#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| posthorn_smtp_codec::fuzzing::command(data));
