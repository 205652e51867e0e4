//! Fuzzes a cursor, as a frame field and as a `Last-Event-ID` header;
//! the properties checked are documented on [`switchboard_fuzz::cursor`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::cursor(data));
