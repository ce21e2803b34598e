#![no_main]
// The body is bitpunch::fuzzing::splice_input, which the stable test suite also
// replays on every corpus entry (tests/fuzz_regressions.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| bitpunch::fuzzing::splice_input(data));
