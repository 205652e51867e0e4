//! Fuzzes a WebSocket JSON text frame (`ClientFrame::from_json`);
//! the properties checked are documented on [`switchboard_fuzz::client_frame`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::client_frame(data));
