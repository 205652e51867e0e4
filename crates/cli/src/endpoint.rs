//! The deployment as the user names it: a base URL from which the
//! WebSocket and HTTP API URLs are derived (SPEC §14).

use crate::CliError;
use reqwest::Url;

/// Who the tools connect as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No name: the server makes one up (anonymous deployments only).
    Anonymous,
    /// `?user=` on a deployment without tokens.
    User(String),
    /// A JWT, sent as `Authorization: Bearer` (never in a URL, where
    /// proxies would log it).
    Token(String),
}

/// A gateway or standalone server: `http(s)://host:port[/prefix]`, with
/// `ws(s)://host:port[/prefix]/ws` accepted too (the `/ws` is dropped,
/// since every path is derived from the base).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    base: Url,
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Self, CliError> {
        let mut url = Url::parse(text.trim())
            .map_err(|err| CliError::Usage(format!("URL {text:?}: {err}")))?;
        let scheme = match url.scheme() {
            "http" | "ws" => "http",
            "https" | "wss" => "https",
            other => {
                return Err(CliError::Usage(format!(
                    "URL {text:?}: scheme {other:?} (use http://host:port or ws://host:port/ws)"
                )));
            }
        };
        if url.host_str().is_none() {
            return Err(CliError::Usage(format!("URL {text:?} has no host")));
        }
        url.set_scheme(scheme)
            .map_err(|()| CliError::Usage(format!("URL {text:?}: cannot use {scheme}")))?;
        let mut path = url.path().trim_end_matches('/').to_owned();
        for suffix in ["/ws/chat", "/ws"] {
            if let Some(stripped) = path.strip_suffix(suffix) {
                path = stripped.to_owned();
                break;
            }
        }
        url.set_path(&path);
        url.set_query(None);
        url.set_fragment(None);
        Ok(Self { base: url })
    }

    /// `ws(s)://host:port[/prefix]/ws`, with `?user=` for [`Credentials::User`].
    pub fn ws_url(&self, credentials: &Credentials) -> Url {
        let mut url = self.with_segments(&["ws"], credentials);
        let scheme = if self.base.scheme() == "https" {
            "wss"
        } else {
            "ws"
        };
        // http → ws and https → wss are both special schemes: allowed.
        let _ = url.set_scheme(scheme);
        url
    }

    /// `…/api/rooms/{room}/messages` (the room percent-encoded as one
    /// segment; the server validates it).
    pub fn messages_url(&self, room: &str, credentials: &Credentials) -> Url {
        self.with_segments(&["api", "rooms", room, "messages"], credentials)
    }

    fn with_segments(&self, segments: &[&str], credentials: &Credentials) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if let Credentials::User(user) = credentials {
            url.query_pairs_mut().append_pair("user", user);
        }
        url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Credentials {
        Credentials::User("al ice".into())
    }

    #[test]
    fn base_urls_and_websocket_urls_name_the_same_endpoints() {
        for text in [
            "http://h:8080",
            "http://h:8080/",
            "ws://h:8080/ws",
            "ws://h:8080/ws/chat",
        ] {
            let e = Endpoint::parse(text).expect("parses");
            assert_eq!(
                e.ws_url(&user()).as_str(),
                "ws://h:8080/ws?user=al+ice",
                "{text}"
            );
            assert_eq!(
                e.messages_url("lobby", &Credentials::Anonymous).as_str(),
                "http://h:8080/api/rooms/lobby/messages",
                "{text}"
            );
        }
    }

    #[test]
    fn prefixes_tls_and_room_encoding_are_kept() {
        let e = Endpoint::parse("https://h/chat/ws?x=1#f").expect("parses");
        assert_eq!(
            e.ws_url(&Credentials::Token("t".into())).as_str(),
            "wss://h/chat/ws"
        );
        assert_eq!(
            e.messages_url("a/b.c", &Credentials::Anonymous).as_str(),
            "https://h/chat/api/rooms/a%2Fb.c/messages"
        );
    }

    #[test]
    fn other_schemes_and_garbage_are_usage_errors() {
        for text in ["ftp://h", "h:8080", "", "http://"] {
            assert!(
                matches!(Endpoint::parse(text), Err(CliError::Usage(_))),
                "{text}"
            );
        }
    }
}
