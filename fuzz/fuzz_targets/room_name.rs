//! Fuzzes a room name, bare and namespaced (`RoomName::parse`);
//! the properties checked are documented on [`switchboard_fuzz::room_name`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::room_name(data));
