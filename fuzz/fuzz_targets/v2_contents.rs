#![no_main]
// The body is bitpunch::fuzzing::v2_contents, which the stable test suite also
// replays on every corpus entry (tests/fuzz_regressions.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| bitpunch::fuzzing::v2_contents(data));
