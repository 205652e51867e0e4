//! Fuzzes a JWT, and a JWT header signed with the key (`Authenticator`);
//! the properties checked are documented on [`switchboard_fuzz::jwt_header`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::jwt_header(data));
