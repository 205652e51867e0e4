use crate::ProtocolError;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Identifies one incarnation of a room log. It changes only when the log
/// is lost or recreated, which is how a client learns that its cursor no
/// longer means anything.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// Epochs are `[A-Za-z0-9]{1,32}` so that a cursor splits unambiguously
    /// at its `:`.
    pub fn parse(epoch: &str) -> Result<Self, ProtocolError> {
        if epoch.is_empty() || epoch.len() > 32 || !epoch.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ProtocolError::BadCursor(format!("bad epoch {epoch:?}")));
        }
        Ok(Self(Arc::from(epoch)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A position in a room log, written `<epoch>:<offset>`.
///
/// Offset 0 is the position before the first event, so the cursor of an
/// empty room is `<epoch>:0` and every stored event has an offset ≥ 1.
///
/// ```
/// use switchboard_protocol::Cursor;
/// let c: Cursor = "k3x9:42".parse().unwrap();
/// assert_eq!(c.offset(), 42);
/// assert_eq!(c.to_string(), "k3x9:42");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    epoch: Epoch,
    offset: u64,
}

impl Cursor {
    pub fn new(epoch: Epoch, offset: u64) -> Self {
        Self { epoch, offset }
    }

    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// The largest offset a cursor may carry.
pub const MAX_OFFSET: u64 = i64::MAX as u64;

impl FromStr for Cursor {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (epoch, offset) = s
            .split_once(':')
            .ok_or_else(|| ProtocolError::BadCursor(format!("{s:?} is not <epoch>:<offset>")))?;
        // Only the spelling `Display` writes: `u64::from_str` alone would
        // also take `+7` and `007`, several strings for one position and
        // cursors of any length (`000…0`).
        let digits = !offset.is_empty() && offset.bytes().all(|b| b.is_ascii_digit());
        let canonical = digits && (offset == "0" || !offset.starts_with('0'));
        let offset = offset
            .parse::<u64>()
            .ok()
            .filter(|_| canonical)
            .ok_or_else(|| ProtocolError::BadCursor(format!("bad offset in {s:?}")))?;
        // Offsets are stream sequences, far below this; refusing the top
        // half keeps every `offset + 1` downstream from overflowing.
        if offset > MAX_OFFSET {
            return Err(ProtocolError::BadCursor(format!(
                "offset in {s:?} is out of range"
            )));
        }
        Ok(Self {
            epoch: Epoch::parse(epoch)?,
            offset,
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let c: Cursor = "abc123:7".parse().expect("valid cursor");
        assert_eq!(c.epoch().as_str(), "abc123");
        assert_eq!(c.to_string(), "abc123:7");
    }

    /// Found by the canonical-spelling property of the `cursor` fuzz
    /// target: `u64::from_str` took `e:+7` and `e:007` (and `e:` then any
    /// number of zeros), which all display as `e:7`.
    #[test]
    fn only_the_canonical_spelling_parses() {
        for ok in ["e:0", "e:7", "e:9223372036854775807"] {
            let c: Cursor = ok.parse().expect(ok);
            assert_eq!(c.to_string(), ok);
        }
        let zeros = format!("e:{}1", "0".repeat(10_000));
        for bad in ["e:+7", "e:007", "e:-0", "e:+0", zeros.as_str()] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "7",
            ":7",
            "e:",
            "e:-1",
            "e:x",
            "a:b:1",
            "e f:1",
            "e.1:2",
            "e:18446744073709551615",
            "e:9223372036854775808",
            "e:+1",
            "e:01",
            "e:00",
            "e: 1",
            "e:1 ",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }
}
