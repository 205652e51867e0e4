use std::collections::{BTreeMap, HashSet};

/// Who is in a room, counted per connection so that a user with two tabs
/// joins once and leaves when the last tab closes.
#[derive(Debug, Default)]
pub(crate) struct Presence {
    users: BTreeMap<String, HashSet<String>>,
}

impl Presence {
    /// Returns true when this is the user's first connection in the room.
    pub(crate) fn add(&mut self, user: &str, conn: &str) -> bool {
        let conns = self.users.entry(user.to_owned()).or_default();
        let first = conns.is_empty();
        conns.insert(conn.to_owned());
        first
    }

    /// Returns true when this was the user's last connection in the room.
    pub(crate) fn remove(&mut self, user: &str, conn: &str) -> bool {
        let Some(conns) = self.users.get_mut(user) else {
            return false;
        };
        if !conns.remove(conn) {
            return false;
        }
        if conns.is_empty() {
            self.users.remove(user);
            return true;
        }
        false
    }

    pub(crate) fn users(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}
