//! Fuzzes a body of `POST /api/rooms/{room}/messages` (`PublishBody`);
//! the properties checked are documented on [`switchboard_fuzz::http_body`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::http_body(data));
