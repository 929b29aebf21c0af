//! The ICE server list handed out in `matched`: configured STUN URLs, plus TURN URLs with
//! short-lived credentials in the TURN REST scheme (coturn `use-auth-secret`), so a TURN
//! server can check them with the shared secret alone and they expire on their own.

use base64::Engine;
use hmac::{Hmac, Mac};
use peer_stream_shared::{IceServer, SessionId};
use sha1::Sha1;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Default)]
pub struct IceConfig {
    pub stun_urls: Vec<String>,
    pub turn_urls: Vec<String>,
    pub turn_secret: Option<String>,
    pub turn_ttl: Duration,
}

impl IceConfig {
    /// The list for one session, with TURN credentials valid for `turn_ttl` from `now`.
    pub fn servers_for(&self, session: &SessionId, now: SystemTime) -> Vec<IceServer> {
        let mut out = Vec::new();
        if !self.stun_urls.is_empty() {
            out.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if let (false, Some(secret)) = (self.turn_urls.is_empty(), &self.turn_secret) {
            let expiry = now
                .checked_add(self.turn_ttl)
                .unwrap_or(now)
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let username = format!("{expiry}:{session}");
            out.push(IceServer {
                urls: self.turn_urls.clone(),
                credential: Some(turn_credential(secret, &username)),
                username: Some(username),
            });
        }
        out
    }
}

/// base64(HMAC-SHA1(secret, username)), as coturn computes it.
pub fn turn_credential(secret: &str, username: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_matches_rfc2202_vector() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?").
        let expected_hex = "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79";
        let b64 = turn_credential("Jefe", "what do ya want for nothing?");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected_hex);
    }

    #[test]
    fn servers_carry_expiring_turn_credentials() {
        let cfg = IceConfig {
            stun_urls: vec!["stun:stun.example.org:3478".into()],
            turn_urls: vec!["turn:turn.example.org:3478".into()],
            turn_secret: Some("s3cret".into()),
            turn_ttl: Duration::from_secs(600),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let list = cfg.servers_for(&SessionId::from("abc"), now);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].urls, vec!["stun:stun.example.org:3478".to_string()]);
        assert_eq!(list[1].username.as_deref(), Some("1000600:abc"));
        assert_eq!(
            list[1].credential.as_deref(),
            Some(turn_credential("s3cret", "1000600:abc").as_str())
        );
        let none = IceConfig::default().servers_for(&SessionId::from("abc"), now);
        assert!(none.is_empty());
    }
}
