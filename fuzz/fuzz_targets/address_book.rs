#![no_main]
// The body is bitpunch::fuzzing::address_book, which the stable test suite also
// replays on every corpus entry (tests/fuzz_regressions.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| bitpunch::fuzzing::address_book(data));
