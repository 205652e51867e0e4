use crate::NatsError;
use switchboard_protocol::RoomName;

/// The NATS names of one Switchboard installation, all under one prefix so
/// that several installations can share a NATS cluster.
///
/// | what | name |
/// |---|---|
/// | request to the core | `<p>.req.<op>.<room>` (queue group `<p>-core`) |
/// | presence refresh of a gateway | `<p>.presence.refresh` |
/// | room log (JetStream) | `<p>.log.<room>` in stream `<P>_ROOMS` |
/// | live feed (republished) | `<p>.live.<room>` |
/// | presence bucket (KV) | `<p>_presence`, key `<room>.<hex(user)>` |
///
/// Rooms are [`RoomName`]s, validated to `[A-Za-z0-9_-]`, so they are
/// always exactly one subject token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

/// Requests the core answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Publish,
    Resume,
    History,
    Presence,
    Join,
    Leave,
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::Publish,
        Op::Resume,
        Op::History,
        Op::Presence,
        Op::Join,
        Op::Leave,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Publish => "publish",
            Op::Resume => "resume",
            Op::History => "history",
            Op::Presence => "presence",
            Op::Join => "join",
            Op::Leave => "leave",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == s)
    }
}

impl Subjects {
    /// `prefix` is `[A-Za-z0-9_-]{1,32}`.
    pub fn new(prefix: &str) -> Result<Self, NatsError> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(NatsError::Config(format!(
                "subject prefix {prefix:?} must match [A-Za-z0-9_-]{{1,32}}"
            )));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn request(&self, op: Op, room: &RoomName) -> String {
        format!("{}.req.{}.{room}", self.prefix, op.as_str())
    }

    /// What the core subscribes to: every op of every room.
    pub fn requests(&self) -> String {
        format!("{}.req.*.*", self.prefix)
    }

    /// Splits a request subject back into op and room.
    pub fn parse_request(&self, subject: &str) -> Option<(Op, RoomName)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".req.")?;
        let (op, room) = rest.split_once('.')?;
        Some((Op::parse(op)?, RoomName::parse(room).ok()?))
    }

    pub fn presence_refresh(&self) -> String {
        format!("{}.presence.refresh", self.prefix)
    }

    pub fn queue_group(&self) -> String {
        format!("{}-core", self.prefix)
    }

    pub fn log(&self, room: &RoomName) -> String {
        format!("{}.log.{room}", self.prefix)
    }

    pub fn logs(&self) -> String {
        format!("{}.log.>", self.prefix)
    }

    pub fn live(&self, room: &RoomName) -> String {
        format!("{}.live.{room}", self.prefix)
    }

    pub fn lives(&self) -> String {
        format!("{}.live.>", self.prefix)
    }

    pub fn stream(&self) -> String {
        format!(
            "{}_ROOMS",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
    }

    pub fn presence_bucket(&self) -> String {
        format!("{}_presence", self.prefix.replace('-', "_"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_map() {
        let s = Subjects::new("sb").expect("prefix");
        let room = RoomName::parse("lobby").expect("room");
        assert_eq!(s.request(Op::Publish, &room), "sb.req.publish.lobby");
        assert_eq!(
            s.parse_request("sb.req.publish.lobby"),
            Some((Op::Publish, room.clone()))
        );
        assert_eq!(s.parse_request("sb.req.nope.lobby"), None);
        assert_eq!(s.parse_request("sb.req.publish.a>b"), None);
        assert_eq!(s.log(&room), "sb.log.lobby");
        assert_eq!(s.live(&room), "sb.live.lobby");
        assert_eq!(s.stream(), "SB_ROOMS");
        assert_eq!(
            Subjects::new("my-app").expect("ok").stream(),
            "MY_APP_ROOMS"
        );
        assert!(Subjects::new("a.b").is_err() && Subjects::new("").is_err());
    }
}
