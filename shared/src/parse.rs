use crate::limits::*;
use crate::{ClientMessage, ErrorCode, MatchId, ProtocolError, ServerMessage};
use serde_json::Value;

/// A client frame as the server acts on it.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientFrame {
    /// A validated `signal`, `chat` or `typing`: `frame` is the text the partner gets
    /// (exactly `ServerMessage::{Signal, Chat, Typing}` serialized).
    Relay { match_id: MatchId, frame: String },
    /// Any other message.
    Message(ClientMessage),
}

/// [`parse_client_message`] for the server's hot path: the same answers (messages, error
/// codes and texts), but a relayed message comes back with its outgoing frame already
/// built.
///
/// The messages sent many times per match (`signal`, `chat`, `typing`, `join`, `next`,
/// `leave`, `undo_next`, `ice_servers`) take a fast path when the frame is in the form
/// `serde_json` (and `JSON.stringify`) write: compact, the escapes `serde_json` itself
/// would write, integer numbers. The frame is then checked in one pass without building a
/// `serde_json::Value`, and a signal's payload is copied into the partner's frame as is:
/// for such input it is byte-for-byte what re-serializing the parsed value would give.
/// Anything else (spaces, other escapes, floats, duplicate keys, an error of any kind)
/// goes through [`parse_client_message`], so the fast path never changes an answer.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, ProtocolError> {
    if let Some(frame) = canonical::parse(text) {
        return Ok(frame);
    }
    let relay = |match_id: MatchId, msg: ServerMessage| ClientFrame::Relay {
        match_id,
        frame: msg.to_json(),
    };
    Ok(match parse_client_message(text)? {
        ClientMessage::Signal { match_id, payload } => relay(
            match_id.clone(),
            ServerMessage::Signal { match_id, payload },
        ),
        ClientMessage::Chat { match_id, text } => {
            relay(match_id.clone(), ServerMessage::Chat { match_id, text })
        }
        ClientMessage::Typing { match_id, active } => {
            relay(match_id.clone(), ServerMessage::Typing { match_id, active })
        }
        other => ClientFrame::Message(other),
    })
}

/// Turns one text frame from a client into a validated message.
///
/// The order of checks decides the error code: not JSON / not an object → `bad_json`;
/// missing or unknown `type` → `unknown_type`; a known type with missing or mistyped
/// fields, or a field out of bounds → `invalid`; a signal payload over
/// [`MAX_SIGNAL_PAYLOAD_BYTES`] → `too_large`. Interests come back normalized.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new(ErrorCode::BadJson, format!("malformed JSON: {e}")))?;
    let Value::Object(map) = &value else {
        return Err(ProtocolError::new(
            ErrorCode::BadJson,
            "expected a JSON object with a \"type\" field",
        ));
    };
    match map.get("type") {
        Some(Value::String(t)) if ClientMessage::TYPES.contains(&t.as_str()) => {}
        Some(Value::String(t)) => {
            let shown: String = t.chars().take(40).collect();
            return Err(ProtocolError::new(
                ErrorCode::UnknownType,
                format!("unknown message type \"{shown}\""),
            ));
        }
        Some(_) => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownType,
                "the \"type\" field must be a string",
            ))
        }
        None => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownType,
                "missing \"type\" field",
            ))
        }
    }
    let msg: ClientMessage = serde_json::from_value(value)
        .map_err(|e| ProtocolError::invalid(format!("bad fields: {e}")))?;
    validate(msg)
}

fn check_id(name: &str, id: &str) -> Result<(), ProtocolError> {
    if id.is_empty() || id.chars().count() > MAX_ID_CHARS {
        return Err(ProtocolError::invalid(format!(
            "{name} must be 1..={MAX_ID_CHARS} characters"
        )));
    }
    Ok(())
}

fn validate(msg: ClientMessage) -> Result<ClientMessage, ProtocolError> {
    match msg {
        ClientMessage::Hello {
            version,
            client,
            counts,
            resume,
        } => {
            if client.chars().count() > MAX_CLIENT_NAME_CHARS {
                return Err(ProtocolError::invalid(format!(
                    "client must be at most {MAX_CLIENT_NAME_CHARS} characters"
                )));
            }
            if let Some(token) = &resume {
                check_id("resume", token)?;
            }
            Ok(ClientMessage::Hello {
                version,
                client,
                counts,
                resume,
            })
        }
        ClientMessage::Join { interests } => Ok(ClientMessage::Join {
            interests: normalize_interests(&interests)?,
        }),
        ClientMessage::Signal { match_id, payload } => {
            check_id("match_id", match_id.as_str())?;
            // Counting bytes through a writer that discards them avoids a copy of a large payload.
            let mut counter = ByteCounter(0);
            serde_json::to_writer(&mut counter, &payload)
                .map_err(|e| ProtocolError::invalid(format!("payload: {e}")))?;
            if counter.0 > MAX_SIGNAL_PAYLOAD_BYTES {
                return Err(ProtocolError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "signal payload is {} bytes; the limit is {MAX_SIGNAL_PAYLOAD_BYTES}",
                        counter.0
                    ),
                ));
            }
            Ok(ClientMessage::Signal { match_id, payload })
        }
        ClientMessage::Chat { match_id, text } => {
            check_id("match_id", match_id.as_str())?;
            let n = text.chars().count();
            if n == 0 || n > MAX_CHAT_CHARS {
                return Err(ProtocolError::invalid(format!(
                    "chat text must be 1..={MAX_CHAT_CHARS} characters (got {n})"
                )));
            }
            Ok(ClientMessage::Chat { match_id, text })
        }
        ClientMessage::Typing { match_id, active } => {
            check_id("match_id", match_id.as_str())?;
            Ok(ClientMessage::Typing { match_id, active })
        }
        ClientMessage::Report { match_id, reason } => {
            check_id("match_id", match_id.as_str())?;
            if reason.chars().count() > MAX_REPORT_REASON_CHARS {
                return Err(ProtocolError::invalid(format!(
                    "reason must be at most {MAX_REPORT_REASON_CHARS} characters"
                )));
            }
            Ok(ClientMessage::Report { match_id, reason })
        }
        ClientMessage::Block { match_id } => {
            check_id("match_id", match_id.as_str())?;
            Ok(ClientMessage::Block { match_id })
        }
        ClientMessage::CallReport {
            match_id,
            path,
            setup_ms,
        } => {
            check_id("match_id", match_id.as_str())?;
            if setup_ms.is_some_and(|ms| ms > MAX_CALL_SETUP_MS) {
                return Err(ProtocolError::invalid(format!(
                    "setup_ms must be 0..={MAX_CALL_SETUP_MS} or null"
                )));
            }
            Ok(ClientMessage::CallReport {
                match_id,
                path,
                setup_ms,
            })
        }
        m @ (ClientMessage::Next { .. }
        | ClientMessage::Leave
        | ClientMessage::UndoNext
        | ClientMessage::IceServers) => Ok(m),
    }
}

/// Trims, lowercases and de-duplicates interests, keeping their order; rejects more than
/// [`MAX_INTERESTS`] or any that is empty or longer than [`MAX_INTEREST_CHARS`].
pub fn normalize_interests(raw: &[String]) -> Result<Vec<String>, ProtocolError> {
    if raw.len() > MAX_INTERESTS {
        return Err(ProtocolError::invalid(format!(
            "at most {MAX_INTERESTS} interests (got {})",
            raw.len()
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for interest in raw {
        let norm = interest.trim().to_lowercase();
        let n = norm.chars().count();
        if n == 0 || n > MAX_INTEREST_CHARS {
            return Err(ProtocolError::invalid(format!(
                "each interest must be 1..={MAX_INTEREST_CHARS} characters after trimming"
            )));
        }
        if !out.contains(&norm) {
            out.push(norm);
        }
    }
    Ok(out)
}

struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The fast path of [`parse_client_frame`]: a scanner that accepts only JSON in the form
/// `serde_json` writes it, so that copying a value's text is the same as parsing and
/// re-serializing it. `None` means "take the general path", never "invalid".
mod canonical {
    use super::{normalize_interests, ClientFrame};
    use crate::limits::{MAX_CHAT_CHARS, MAX_ID_CHARS, MAX_SIGNAL_PAYLOAD_BYTES};
    use crate::{ClientMessage, MatchId, NextReason};

    /// Deeper nesting takes the general path (serde_json's own limit is 128).
    const MAX_DEPTH: usize = 64;
    /// Objects with more keys take the general path (the duplicate check is quadratic).
    const MAX_KEYS: usize = 16;
    /// Longer integers may not fit an i64/u64 and would be re-printed as floats.
    const MAX_DIGITS: usize = 18;

    pub(super) fn parse(text: &str) -> Option<ClientFrame> {
        let mut s = Scanner {
            text,
            b: text.as_bytes(),
            i: 0,
        };
        let [mut ty, mut match_id, mut payload, mut chat, mut active, mut interests, mut reason] =
            [None; 7];
        s.eat(b'{')?;
        if s.eat(b'}').is_none() {
            loop {
                let key = s.string()?;
                s.eat(b':')?;
                let start = s.i;
                s.value(1)?;
                let value = &text[start..s.i];
                let slot = match key {
                    "type" => Some(&mut ty),
                    "match_id" => Some(&mut match_id),
                    "payload" => Some(&mut payload),
                    "text" => Some(&mut chat),
                    "active" => Some(&mut active),
                    "interests" => Some(&mut interests),
                    "reason" => Some(&mut reason),
                    _ => None,
                };
                if slot.is_some_and(|slot| slot.replace(value).is_some()) {
                    return None; // a duplicate: the general path keeps the last one
                }
                if s.eat(b',').is_none() {
                    s.eat(b'}')?;
                    break;
                }
            }
        }
        if s.i != text.len() {
            return None;
        }
        let message = |m| Some(ClientFrame::Message(m));
        match ty? {
            r#""leave""# => return message(ClientMessage::Leave),
            r#""undo_next""# => return message(ClientMessage::UndoNext),
            r#""ice_servers""# => return message(ClientMessage::IceServers),
            r#""next""# => {
                // A known reason, or none: an unknown string or null is a plain skip.
                let reason = match reason {
                    None | Some("null") => None,
                    Some(r) => (plain_string(r)? == NextReason::ConnectionFailed.as_str())
                        .then_some(NextReason::ConnectionFailed),
                };
                return message(ClientMessage::Next { reason });
            }
            r#""join""# => {
                let raw = match interests {
                    None => Vec::new(),
                    Some(list) => plain_strings(list)?,
                };
                let interests = normalize_interests(&raw).ok()?;
                return message(ClientMessage::Join { interests });
            }
            _ => {}
        }
        let match_id = plain_string(match_id?)?;
        let n = match_id.chars().count();
        if n == 0 || n > MAX_ID_CHARS {
            return None;
        }
        let frame = match ty? {
            r#""signal""# => {
                let payload = payload?;
                if payload.len() > MAX_SIGNAL_PAYLOAD_BYTES {
                    return None;
                }
                format!(r#"{{"type":"signal","match_id":"{match_id}","payload":{payload}}}"#)
            }
            r#""chat""# => {
                let chat = plain_string(chat?)?;
                let n = chat.chars().count();
                if n == 0 || n > MAX_CHAT_CHARS {
                    return None;
                }
                format!(r#"{{"type":"chat","match_id":"{match_id}","text":"{chat}"}}"#)
            }
            r#""typing""# => {
                let active = active.filter(|a| matches!(*a, "true" | "false"))?;
                format!(r#"{{"type":"typing","match_id":"{match_id}","active":{active}}}"#)
            }
            _ => return None,
        };
        Some(ClientFrame::Relay {
            match_id: MatchId(match_id.to_owned()),
            frame,
        })
    }

    /// The contents of a string value without escapes (then they equal its text).
    fn plain_string(value: &str) -> Option<&str> {
        let inner = value.strip_prefix('"')?.strip_suffix('"')?;
        (!inner.contains('\\')).then_some(inner)
    }

    /// An array of strings without escapes (`value` is already known to be canonical).
    fn plain_strings(value: &str) -> Option<Vec<String>> {
        let mut s = Scanner {
            text: value,
            b: value.as_bytes(),
            i: 0,
        };
        let mut out = Vec::new();
        s.eat(b'[')?;
        if s.eat(b']').is_some() {
            return Some(out);
        }
        loop {
            let item = s.string()?;
            if item.contains('\\') {
                return None;
            }
            out.push(item.to_owned());
            if s.eat(b',').is_none() {
                s.eat(b']')?;
                return Some(out);
            }
        }
    }

    struct Scanner<'a> {
        text: &'a str,
        b: &'a [u8],
        i: usize,
    }

    impl<'a> Scanner<'a> {
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        fn eat(&mut self, c: u8) -> Option<()> {
            (self.peek()? == c).then(|| self.i += 1)
        }

        fn literal(&mut self, word: &[u8]) -> Option<()> {
            let end = self.i + word.len();
            (self.b.get(self.i..end)? == word).then(|| self.i = end)
        }

        fn value(&mut self, depth: usize) -> Option<()> {
            match self.peek()? {
                b'{' => self.object(depth),
                b'[' => self.array(depth),
                b'"' => self.string().map(drop),
                b't' => self.literal(b"true"),
                b'f' => self.literal(b"false"),
                b'n' => self.literal(b"null"),
                b'-' | b'0'..=b'9' => self.integer(),
                _ => None,
            }
        }

        fn object(&mut self, depth: usize) -> Option<()> {
            if depth >= MAX_DEPTH {
                return None;
            }
            self.eat(b'{')?;
            if self.eat(b'}').is_some() {
                return Some(());
            }
            let mut keys: [&str; MAX_KEYS] = [""; MAX_KEYS];
            let mut n = 0;
            loop {
                let key = self.string()?;
                // The key text is canonical, so equal texts are equal keys and different
                // texts different keys; a duplicate would be dropped by the general path.
                if n == MAX_KEYS || keys[..n].contains(&key) {
                    return None;
                }
                keys[n] = key;
                n += 1;
                self.eat(b':')?;
                self.value(depth + 1)?;
                if self.eat(b',').is_none() {
                    return self.eat(b'}');
                }
            }
        }

        fn array(&mut self, depth: usize) -> Option<()> {
            if depth >= MAX_DEPTH {
                return None;
            }
            self.eat(b'[')?;
            if self.eat(b']').is_some() {
                return Some(());
            }
            loop {
                self.value(depth + 1)?;
                if self.eat(b',').is_none() {
                    return self.eat(b']');
                }
            }
        }

        /// `-?(0|[1-9][0-9]*)`, not `-0`, short enough to stay an integer; a fraction or
        /// an exponent would be re-printed differently.
        fn integer(&mut self) -> Option<()> {
            let negative = self.eat(b'-').is_some();
            let start = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
            let digits = &self.b[start..self.i];
            let ok = match digits {
                [] => false,
                [b'0'] => !negative,
                [b'0', ..] => false,
                _ => digits.len() <= MAX_DIGITS,
            };
            let fraction = matches!(self.peek(), Some(b'.' | b'e' | b'E'));
            (ok && !fraction).then_some(())
        }

        /// A string with only the escapes `serde_json` writes; returns its text between
        /// the quotes.
        fn string(&mut self) -> Option<&'a str> {
            self.eat(b'"')?;
            let start = self.i;
            loop {
                match self.peek()? {
                    b'"' => break,
                    b'\\' => {
                        self.i += 1;
                        match self.peek()? {
                            b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                            b'u' => {
                                // serde_json writes \u00XX (lower-case hex) only for the
                                // control characters without a short form.
                                let hex = self.b.get(self.i + 1..self.i + 5)?;
                                let [b'0', b'0', hi @ (b'0' | b'1'), lo] = *hex else {
                                    return None;
                                };
                                let lo = match lo {
                                    b'0'..=b'9' => lo - b'0',
                                    b'a'..=b'f' => lo - b'a' + 10,
                                    _ => return None,
                                };
                                let c = (hi - b'0') * 16 + lo;
                                if matches!(c, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                                    return None;
                                }
                                self.i += 5;
                            }
                            _ => return None,
                        }
                    }
                    c if c < 0x20 => return None,
                    _ => self.i += 1,
                }
            }
            let end = self.i;
            self.i += 1;
            // Both ends sit next to an ASCII quote, so they are character boundaries.
            self.text.get(start..end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MatchId, ServerMessage, SessionId};
    use proptest::prelude::*;

    fn code(text: &str) -> ErrorCode {
        match parse_client_message(text) {
            Ok(m) => panic!("expected an error for {text}, got {m:?}"),
            Err(e) => e.code,
        }
    }

    #[test]
    fn parses_every_client_message() {
        let cases = [
            r#"{"type":"hello","version":1,"client":"t/1"}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"join","interests":[" Music ","rust","music"]}"#,
            r#"{"type":"signal","match_id":"m","payload":{"kind":"offer","sdp":"v=0"}}"#,
            r#"{"type":"chat","match_id":"m","text":"hi"}"#,
            r#"{"type":"typing","match_id":"m","active":true}"#,
            r#"{"type":"next"}"#,
            r#"{"type":"leave","extra":[1,2]}"#,
            r#"{"type":"report","match_id":"m","reason":"spam"}"#,
            r#"{"type":"hello","version":1,"client":"t/1","counts":true}"#,
            r#"{"type":"undo_next"}"#,
            r#"{"type":"ice_servers"}"#,
            r#"{"type":"block","match_id":"m"}"#,
            r#"{"type":"next","reason":"connection_failed"}"#,
            r#"{"type":"call_report","match_id":"m","path":"relay","setup_ms":850}"#,
            r#"{"type":"hello","version":1,"client":"t/1","resume":"0123abcd"}"#,
            r#"{"type":"hello","version":1,"client":"t/1","resume":null}"#,
        ];
        for c in cases {
            assert!(parse_client_message(c).is_ok(), "{c}");
        }
        assert_eq!(
            parse_client_message(r#"{"type":"join","interests":[" Music ","rust","music"]}"#),
            Ok(ClientMessage::Join {
                interests: vec!["music".into(), "rust".into()]
            })
        );
    }

    #[test]
    fn error_codes_follow_the_contract() {
        assert_eq!(code("not json"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"kind":"hello"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":7}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"hello"}"#), ErrorCode::Invalid);
        assert_eq!(
            code(r#"{"type":"hello","version":1,"client":"c","counts":"yes"}"#),
            ErrorCode::Invalid
        );
        // `resume`: a string of 1..=64 characters; null is the same as absent.
        assert_eq!(
            code(r#"{"type":"hello","version":1,"client":"c","resume":7}"#),
            ErrorCode::Invalid
        );
        assert_eq!(
            code(r#"{"type":"hello","version":1,"client":"c","resume":""}"#),
            ErrorCode::Invalid
        );
        let long = format!(
            r#"{{"type":"hello","version":1,"client":"c","resume":"{}"}}"#,
            "x".repeat(65)
        );
        assert_eq!(code(&long), ErrorCode::Invalid);
        assert_eq!(code(r#"{"type":"block"}"#), ErrorCode::Invalid);
        assert_eq!(
            code(r#"{"type":"block","match_id":""}"#),
            ErrorCode::Invalid
        );
        assert_eq!(
            code(r#"{"type":"chat","match_id":"m","text":""}"#),
            ErrorCode::Invalid
        );
        let long = "x".repeat(MAX_CHAT_CHARS + 1);
        assert_eq!(
            code(&format!(
                r#"{{"type":"chat","match_id":"m","text":"{long}"}}"#
            )),
            ErrorCode::Invalid
        );
        let ok = "é".repeat(MAX_CHAT_CHARS);
        assert!(parse_client_message(&format!(
            r#"{{"type":"chat","match_id":"m","text":"{ok}"}}"#
        ))
        .is_ok());
        let eleven: Vec<String> = (0..11).map(|i| format!("\"i{i}\"")).collect();
        assert_eq!(
            code(&format!(
                r#"{{"type":"join","interests":[{}]}}"#,
                eleven.join(",")
            )),
            ErrorCode::Invalid
        );
        assert_eq!(
            code(r#"{"type":"join","interests":["   "]}"#),
            ErrorCode::Invalid
        );
        let i33 = "a".repeat(33);
        assert_eq!(
            code(&format!(r#"{{"type":"join","interests":["{i33}"]}}"#)),
            ErrorCode::Invalid
        );
        let big = "y".repeat(MAX_SIGNAL_PAYLOAD_BYTES);
        assert_eq!(
            code(&format!(
                r#"{{"type":"signal","match_id":"m","payload":{{"sdp":"{big}"}}}}"#
            )),
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn next_reason_is_optional_and_forward_compatible() {
        let plain = ClientMessage::Next { reason: None };
        assert_eq!(
            parse_client_message(r#"{"type":"next"}"#),
            Ok(plain.clone())
        );
        assert_eq!(
            plain.to_json(),
            r#"{"type":"next"}"#,
            "a v1 next on the wire"
        );
        let failed = ClientMessage::Next {
            reason: Some(crate::NextReason::ConnectionFailed),
        };
        assert_eq!(
            parse_client_message(r#"{"type":"next","reason":"connection_failed"}"#),
            Ok(failed.clone())
        );
        assert_eq!(
            failed.to_json(),
            r#"{"type":"next","reason":"connection_failed"}"#
        );
        for unknown in [
            r#"{"type":"next","reason":"bored"}"#,
            r#"{"type":"next","reason":""}"#,
            r#"{"type":"next","reason":null}"#,
        ] {
            assert_eq!(
                parse_client_message(unknown),
                Ok(plain.clone()),
                "{unknown}"
            );
        }
        assert_eq!(code(r#"{"type":"next","reason":5}"#), ErrorCode::Invalid);
    }

    #[test]
    fn call_report_is_validated() {
        use crate::CallPath;
        for path in CallPath::ALL {
            let text = format!(
                r#"{{"type":"call_report","match_id":"m1","path":"{}","setup_ms":null}}"#,
                path.as_str()
            );
            assert_eq!(
                parse_client_message(&text),
                Ok(ClientMessage::CallReport {
                    match_id: MatchId::from("m1"),
                    path,
                    setup_ms: None,
                }),
                "{text}"
            );
        }
        let ok = ClientMessage::CallReport {
            match_id: MatchId::from("m1"),
            path: CallPath::Srflx,
            setup_ms: Some(0),
        };
        let json = ok.to_json();
        assert_eq!(
            json,
            r#"{"type":"call_report","match_id":"m1","path":"srflx","setup_ms":0}"#
        );
        assert_eq!(parse_client_message(&json), Ok(ok));
        // setup_ms may be left out (null).
        assert!(
            parse_client_message(r#"{"type":"call_report","match_id":"m","path":"failed"}"#)
                .is_ok()
        );
        let max = format!(
            r#"{{"type":"call_report","match_id":"m","path":"host","setup_ms":{MAX_CALL_SETUP_MS}}}"#
        );
        assert!(parse_client_message(&max).is_ok());
        let over = format!(
            r#"{{"type":"call_report","match_id":"m","path":"host","setup_ms":{}}}"#,
            MAX_CALL_SETUP_MS + 1
        );
        let long_id = "x".repeat(MAX_ID_CHARS + 1);
        let long = format!(r#"{{"type":"call_report","match_id":"{long_id}","path":"host"}}"#);
        for bad in [
            over.as_str(),
            long.as_str(),
            r#"{"type":"call_report","match_id":"m","path":"turn"}"#,
            r#"{"type":"call_report","match_id":"m","path":"HOST"}"#,
            r#"{"type":"call_report","match_id":"m","path":null}"#,
            r#"{"type":"call_report","match_id":"m"}"#,
            r#"{"type":"call_report","path":"host"}"#,
            r#"{"type":"call_report","match_id":"","path":"host"}"#,
            r#"{"type":"call_report","match_id":"m","path":"host","setup_ms":-1}"#,
            r#"{"type":"call_report","match_id":"m","path":"host","setup_ms":1.5}"#,
            r#"{"type":"call_report","match_id":"m","path":"host","setup_ms":"12"}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::Invalid, "{bad}");
        }
    }

    #[test]
    fn server_messages_round_trip() {
        let m = ServerMessage::PartnerLeft {
            match_id: MatchId::from("abc"),
            reason: crate::PartnerLeftReason::Skipped,
        };
        let json = m.to_json();
        assert_eq!(
            json,
            r#"{"type":"partner_left","match_id":"abc","reason":"skipped"}"#
        );
        let back: ServerMessage = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, m);
        let unknown: ServerMessage =
            serde_json::from_str(r#"{"type":"error","code":"brand_new","message":"x"}"#)
                .expect("unknown codes are tolerated");
        assert_eq!(
            unknown,
            ServerMessage::error(ErrorCode::Other, "x"),
            "unknown error codes map to Other"
        );
        // An old `welcome` (no resume fields) still reads; the new fields are left out
        // when unset, so old clients see exactly what they saw before.
        let old: ServerMessage =
            serde_json::from_str(r#"{"type":"welcome","version":1,"session_id":"s","online":2}"#)
                .expect("old welcome");
        assert!(matches!(
            old,
            ServerMessage::Welcome {
                resume_token: None,
                resumed: false,
                ..
            }
        ));
        assert_eq!(
            old.to_json(),
            r#"{"type":"welcome","version":1,"session_id":"s","online":2}"#
        );
        let resumed = ServerMessage::Welcome {
            version: 1,
            session_id: SessionId::from("s"),
            online: 2,
            resume_token: Some("t".into()),
            resumed: true,
        };
        assert_eq!(
            resumed.to_json(),
            r#"{"type":"welcome","version":1,"session_id":"s","online":2,"resume_token":"t","resumed":true}"#
        );
    }

    /// What the general path makes of a frame: the reference for the fast one.
    fn general(text: &str) -> Result<ClientFrame, ProtocolError> {
        Ok(match parse_client_message(text)? {
            ClientMessage::Signal { match_id, payload } => ClientFrame::Relay {
                frame: ServerMessage::Signal {
                    match_id: match_id.clone(),
                    payload,
                }
                .to_json(),
                match_id,
            },
            ClientMessage::Chat { match_id, text } => ClientFrame::Relay {
                frame: ServerMessage::Chat {
                    match_id: match_id.clone(),
                    text,
                }
                .to_json(),
                match_id,
            },
            ClientMessage::Typing { match_id, active } => ClientFrame::Relay {
                frame: ServerMessage::Typing {
                    match_id: match_id.clone(),
                    active,
                }
                .to_json(),
                match_id,
            },
            other => ClientFrame::Message(other),
        })
    }

    /// The fast path answers exactly as the general path, and `fast` says whether the
    /// fast path (not the fallback) answered.
    fn same_answer(text: &str, fast: bool) {
        assert_eq!(parse_client_frame(text), general(text), "{text}");
        assert_eq!(canonical::parse(text).is_some(), fast, "{text}");
    }

    #[test]
    fn relayed_frames_take_the_fast_path_with_the_same_bytes() {
        let payloads = [
            r#"{"kind":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}"#,
            r#"{"kind":"candidate","candidate":"candidate:1 1 udp 1 10.0.0.1 5000 typ host","sdp_mid":"0","sdp_mline_index":0}"#,
            r#"{"kind":"bench","t":1234567890123,"pad":"é ✓ \"q\" \\ \u001f \u0000 \b\f\t"}"#,
            r#"[1,-2,0,true,false,null,[],{},{"a":{"b":[{"c":"d"}]}}]"#,
            r#"null"#,
            r#""just a string""#,
        ];
        for p in payloads {
            same_answer(
                &format!(r#"{{"type":"signal","match_id":"m1","payload":{p}}}"#),
                true,
            );
            // Field order and unknown fields do not matter.
            same_answer(
                &format!(r#"{{"payload":{p},"x":[1,{{"y":2}}],"match_id":"m1","type":"signal"}}"#),
                true,
            );
        }
        same_answer(r#"{"type":"chat","match_id":"m","text":"hello é ✓"}"#, true);
        same_answer(r#"{"type":"typing","match_id":"m","active":true}"#, true);
        same_answer(r#"{"type":"typing","match_id":"m","active":false}"#, true);
        // The other messages of every match.
        for text in [
            r#"{"type":"join"}"#,
            r#"{"type":"join","interests":[]}"#,
            r#"{"type":"join","interests":[" Music ","rust","music"]}"#,
            r#"{"type":"next"}"#,
            r#"{"type":"next","reason":"connection_failed"}"#,
            r#"{"type":"next","reason":"bored"}"#,
            r#"{"type":"next","reason":null}"#,
            r#"{"type":"leave"}"#,
            r#"{"type":"leave","extra":[1,2]}"#,
            r#"{"type":"undo_next"}"#,
            r#"{"type":"ice_servers"}"#,
        ] {
            same_answer(text, true);
        }
        // What serde_json writes for every relayed message takes the fast path.
        let msgs = [
            ClientMessage::Signal {
                match_id: MatchId::from("abc"),
                payload: serde_json::json!({"kind":"answer","sdp":"v=0\r\n\u{1}\t\"x\"/é"}),
            },
            ClientMessage::Chat {
                match_id: MatchId::from("abc"),
                text: "plain text".into(),
            },
            ClientMessage::Typing {
                match_id: MatchId::from("abc"),
                active: true,
            },
            ClientMessage::Join {
                interests: vec!["rust".into(), "music".into()],
            },
            ClientMessage::Next {
                reason: Some(crate::NextReason::ConnectionFailed),
            },
            ClientMessage::Next { reason: None },
            ClientMessage::Leave,
            ClientMessage::UndoNext,
            ClientMessage::IceServers,
        ];
        for m in msgs {
            same_answer(&m.to_json(), true);
        }
    }

    #[test]
    fn other_forms_fall_back_to_the_general_path() {
        let payloads = [
            r#"{"a": 1}"#,            // whitespace
            r#"{"a":1,"a":2}"#,       // duplicate key (the last one wins)
            r#"{"a":{"b":1,"b":1}}"#, // nested duplicate
            r#""\/""#,                // an escape serde_json does not write
            r#""\u00e9""#,
            r#""\u001F""#, // upper-case hex
            r#""\u000a""#, // has a short form (\n)
            r#""\ud800""#, // lone surrogate: an error
            r#"1.0"#,
            r#"1e5"#,
            r#"-0"#,
            r#"012"#,
            r#"12345678901234567890"#, // not a u64: a float
            r#"tru"#,
            r#"{"a":1,}"#,
            r#"[1,]"#,
        ];
        for p in payloads {
            same_answer(
                &format!(r#"{{"type":"signal","match_id":"m","payload":{p}}}"#),
                false,
            );
        }
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        same_answer(
            &format!(r#"{{"type":"signal","match_id":"m","payload":{deep}}}"#),
            false,
        );
        let many: Vec<String> = (0..20).map(|i| format!(r#""k{i}":{i}"#)).collect();
        same_answer(
            &format!(
                r#"{{"type":"signal","match_id":"m","payload":{{{}}}}}"#,
                many.join(",")
            ),
            false,
        );
        let big = "y".repeat(MAX_SIGNAL_PAYLOAD_BYTES);
        same_answer(
            &format!(r#"{{"type":"signal","match_id":"m","payload":"{big}"}}"#),
            false,
        );
        let long_id = "x".repeat(MAX_ID_CHARS + 1);
        let long_id = format!(r#"{{"type":"chat","match_id":"{long_id}","text":"a"}}"#);
        for text in [
            r#" {"type":"chat","match_id":"m","text":"hi"}"#,
            r#"{"type":"chat","match_id":"m","text":"hi"} "#,
            r#"{"type":"chat","match_id":"m","text":"say \"hi\""}"#,
            r#"{"type":"chat","match_id":"m","text":""}"#,
            r#"{"type":"chat","match_id":"m","text":"a","text":"b"}"#,
            r#"{"type":"chat","match_id":"m"}"#,
            r#"{"type":"chat","match_id":"","text":"a"}"#,
            r#"{"type":"chat","match_id":"\u006d","text":"a"}"#,
            r#"{"type":"chat","match_id":7,"text":"a"}"#,
            long_id.as_str(),
            r#"{"type":"typing","match_id":"m","active":1}"#,
            r#"{"type":"typing","match_id":"m"}"#,
            r#"{"type":"signal","match_id":"m"}"#,
            r#"{"type":"join","interests":null}"#,
            r#"{"type":"join","interests":["   "]}"#,
            r#"{"type":"join","interests":["a\u0062"]}"#,
            r#"{"type":"join","interests":[1]}"#,
            r#"{"type":"join","interests":"music"}"#,
            r#"{"type":"next","reason":5}"#,
            r#"{"type":"next","reason":"connection\u005ffailed"}"#,
            r#"{"type":"hello","version":1,"client":"t/1"}"#,
            r#"{"type":"report","match_id":"m","reason":"spam"}"#,
            r#"{"type":"dance","match_id":"m","payload":1}"#,
            r#"{"type":"signal","type":"signal","match_id":"m","payload":1}"#,
            r#"{}"#,
            r#"[]"#,
            "",
        ] {
            same_answer(text, false);
        }
        let long_chat = "x".repeat(MAX_CHAT_CHARS + 1);
        same_answer(
            &format!(r#"{{"type":"chat","match_id":"m","text":"{long_chat}"}}"#),
            false,
        );
        same_answer(
            &format!(
                r#"{{"type":"chat","match_id":"m","text":"{}"}}"#,
                "é".repeat(MAX_CHAT_CHARS)
            ),
            true,
        );
    }

    /// Random JSON values, written by serde_json: the fast path must take them all.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,12}|[\\x00-\\x7f]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("[a-c\\x00-\\x1f\"\\\\]{0,3}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,300}") {
            let _ = parse_client_message(&s);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let s = String::from_utf8_lossy(&bytes);
            let _ = parse_client_message(&s);
        }

        #[test]
        fn fast_path_equals_the_general_path_on_serde_json_output(v in json_value()) {
            let text = format!(
                r#"{{"type":"signal","match_id":"m","payload":{}}}"#,
                serde_json::to_string(&v).expect("serialize")
            );
            prop_assert_eq!(parse_client_frame(&text), general(&text));
            // Floats and integers past 18 digits take the general path on purpose.
            let text_has_long_number = {
                let mut run = 0usize;
                let mut long = false;
                for c in text.chars() {
                    run = if c.is_ascii_digit() { run + 1 } else { 0 };
                    long |= run > 18;
                }
                long
            };
            fn has_float(v: &Value) -> bool {
                match v {
                    Value::Number(n) => n.is_f64(),
                    Value::Array(a) => a.iter().any(has_float),
                    Value::Object(o) => o.values().any(has_float),
                    _ => false,
                }
            }
            if !has_float(&v) && !text_has_long_number && text.len() < MAX_SIGNAL_PAYLOAD_BYTES {
                prop_assert!(canonical::parse(&text).is_some(), "{}", text);
            }
        }

        #[test]
        fn fast_path_never_differs_on_json_like_text(
            parts in prop::collection::vec(prop::sample::select(vec![
                "{", "}", "[", "]", ",", ":", " ", "\"a\"", "\"b\"", "\"\\u00e9\"", "\"\\u001f\"",
                "\"\\/\"", "\"\\n\"", "1", "-0", "0", "1.5", "2e3", "true", "null", "\"\\ud800\"",
                "\"type\"", "\"signal\"", "\"chat\"", "\"text\"", "\"match_id\"", "\"m\"",
            ]), 0..24),
            prefix in prop::sample::select(vec![
                r#"{"type":"signal","match_id":"m","payload":"#,
                r#"{"type":"chat","match_id":"m","text":"#,
                r#"{"type":"typing","match_id":"m","active":"#,
                r#"{"type":"join","interests":"#,
                r#"{"type":"next","reason":"#,
                r#"{"#,
            ]),
        ) {
            let body: String = parts.concat();
            for text in [format!("{prefix}{body}}}"), format!("{prefix}{body}"), body.clone()] {
                if let Some(fast) = canonical::parse(&text) {
                    prop_assert_eq!(Ok(fast), general(&text), "{}", text);
                }
            }
        }

        #[test]
        fn json_shaped_input_never_panics(
            t in prop::sample::select(vec!["hello","join","signal","chat","typing","next","leave","report","x"]),
            key in "[a-z_]{1,12}",
            val in prop_oneof![
                Just("null".to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                ".{0,40}".prop_map(|s| serde_json::Value::String(s).to_string()),
                Just("[\"a\",\"b\"]".to_string()),
                Just("{\"nested\":{\"deep\":[1,2,3]}}".to_string()),
            ],
        ) {
            let text = format!(r#"{{"type":"{t}","{key}":{val},"match_id":"m"}}"#);
            let _ = parse_client_message(&text);
        }
    }
}
