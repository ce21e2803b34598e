#![no_main]
// The body is bitpunch::fuzzing::channel_v1, which the stable test suite also
// replays on every corpus entry (tests/fuzz_regressions.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| bitpunch::fuzzing::channel_v1(data));
