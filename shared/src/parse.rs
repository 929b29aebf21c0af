use crate::limits::*;
use crate::{ClientMessage, ErrorCode, ProtocolError};
use serde_json::Value;

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
