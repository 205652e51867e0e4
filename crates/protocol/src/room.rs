use crate::ProtocolError;
use std::fmt;
use std::sync::Arc;

/// Longest room name the spec allows.
pub const MAX_ROOM_LEN: usize = 64;

/// A room name that matched `^[A-Za-z0-9_-]{1,64}$`.
///
/// The only constructor validates, so a `RoomName` can be put into a NATS
/// subject as is: `.`, `*` and `>` can never address another room. Cloning
/// is a reference-count bump because names travel with every event.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Validates `name` and wraps it.
    ///
    /// ```
    /// use switchboard_protocol::RoomName;
    /// assert!(RoomName::parse("lobby-1").is_ok());
    /// assert!(RoomName::parse("a.b").is_err());
    /// ```
    pub fn parse(name: &str) -> Result<Self, ProtocolError> {
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if name.is_empty() || name.len() > MAX_ROOM_LEN || !valid_chars {
            return Err(ProtocolError::InvalidRoom(truncate_for_message(name)));
        }
        Ok(Self(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Error messages echo bad input; keep them short and printable.
fn truncate_for_message(name: &str) -> String {
    let mut shown: String = name.chars().take(80).flat_map(char::escape_debug).collect();
    if name.chars().count() > 80 {
        shown.push('…');
    }
    shown
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for RoomName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_spec_alphabet() {
        for ok in ["a", "lobby", "A_b-9", &"x".repeat(64)] {
            assert!(RoomName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_subject_tokens_and_bad_lengths() {
        for bad in ["", "a.b", ">", "*", "a b", "é", "a/b", &"x".repeat(65)] {
            assert!(
                matches!(RoomName::parse(bad), Err(ProtocolError::InvalidRoom(_))),
                "{bad:?}"
            );
        }
    }
}
