//! The chat session as a sans-I/O state machine: feed it [`Input`]s (what the user,
//! the server and the peer connection did), drain [`Output`]s (what to send, what to
//! start or stop). No sockets, no clocks, no threads, so every transition is unit-tested.
//!
//! Phases: idle → searching → matched → connecting → live → ended, with reconnecting
//! when the server is lost. The machine also remembers whether the user *wants* to be
//! searching, so after a server restart it re-joins the queue on its own.

use peer_stream_shared::{
    ClientMessage, ErrorCode, IceServer, MatchId, PartnerLeftReason, Role, ServerMessage,
};
use serde_json::Value;
use std::collections::VecDeque;

/// Where the session is; what the UI shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not connected to the server yet (or never asked to).
    Offline,
    /// Connected, not searching.
    Idle,
    /// In the queue, waiting for a stranger.
    Searching { waiting: u64 },
    /// The server paired us; the peer connection is being set up.
    Connecting { match_id: MatchId, role: Role },
    /// Media is flowing.
    Live { match_id: MatchId },
    /// The last match ended; idle until the user (or auto-requeue) searches again.
    Ended { reason: EndReason },
    /// The server connection dropped; the driver is reconnecting.
    Reconnecting,
    /// The server refused us for good (banned, version); nothing more will happen.
    Refused { code: ErrorCode, message: String },
}

/// Why a match ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The stranger skipped, stopped or vanished.
    PartnerLeft(PartnerLeftReason),
    /// We skipped (Next) or stopped.
    WeLeft,
    /// The peer connection failed.
    ConnectionFailed,
    /// The server connection was lost mid-call.
    ServerLost,
}

/// Everything that can happen to a session.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// The user wants to meet someone (Start).
    Start { interests: Vec<String> },
    /// Skip the current stranger (or the wait) and search again.
    Next,
    /// Stop searching / leave the call.
    Stop,
    /// Send a chat line to the current stranger.
    SendChat(String),
    /// The user started or stopped typing.
    Typing(bool),
    /// Report the current (or last) stranger; also skips.
    Report(String),
    /// The WebSocket to the server is open.
    ServerConnected,
    /// The WebSocket to the server closed or failed.
    ServerLost,
    /// A message from the server.
    Server(ServerMessage),
    /// The peer connection for `match_id` is connected (media can flow).
    PeerConnected(MatchId),
    /// The peer connection for `match_id` failed or closed by itself.
    PeerFailed(MatchId),
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Send(ClientMessage),
    /// Create a peer connection for this match; the offerer then sends an offer.
    StartPeer {
        match_id: MatchId,
        role: Role,
        ice_servers: Vec<IceServer>,
    },
    /// Hand a relayed signal payload to the peer connection of `match_id`.
    PeerSignal {
        match_id: MatchId,
        payload: Value,
    },
    /// Tear the peer connection down (if any).
    StopPeer,
    /// Something for the user: chat, typing, system lines, errors.
    Notify(Notice),
}

/// Things the UI shows besides the phase.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    Chat {
        from_me: bool,
        text: String,
    },
    StrangerTyping(bool),
    /// A system line such as "You both like: music".
    System(String),
    /// The server refused something.
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Welcome from the server: how many people are online.
    Online(u64),
    /// A new match began (common interests).
    Matched {
        common_interests: Vec<String>,
    },
}

#[derive(Debug)]
pub struct Session {
    phase: Phase,
    /// The user asked to be searching or in calls (Start without Stop).
    wants_search: bool,
    /// Search again by itself when a stranger leaves.
    auto_requeue: bool,
    interests: Vec<String>,
    /// Hello was answered by welcome on the current socket.
    welcomed: bool,
    client_name: String,
    /// The last match, kept after it ends so it can still be reported.
    last_match: Option<MatchId>,
    out: VecDeque<Output>,
}

impl Session {
    pub fn new(client_name: impl Into<String>, auto_requeue: bool) -> Self {
        Self {
            phase: Phase::Offline,
            wants_search: false,
            auto_requeue,
            interests: Vec::new(),
            welcomed: false,
            client_name: client_name.into(),
            last_match: None,
            out: VecDeque::new(),
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn set_auto_requeue(&mut self, on: bool) {
        self.auto_requeue = on;
    }

    /// The match whose signals are accepted right now.
    pub fn current_match(&self) -> Option<&MatchId> {
        match &self.phase {
            Phase::Connecting { match_id, .. } | Phase::Live { match_id } => Some(match_id),
            _ => None,
        }
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn send(&mut self, msg: ClientMessage) {
        self.out.push_back(Output::Send(msg));
    }

    fn notify(&mut self, n: Notice) {
        self.out.push_back(Output::Notify(n));
    }

    fn system(&mut self, text: impl Into<String>) {
        self.notify(Notice::System(text.into()));
    }

    fn in_call(&self) -> bool {
        self.current_match().is_some()
    }

    fn end_call(&mut self, reason: EndReason) {
        if self.in_call() {
            self.out.push_back(Output::StopPeer);
        }
        self.phase = Phase::Ended { reason };
    }

    fn join(&mut self) {
        self.send(ClientMessage::Join {
            interests: self.interests.clone(),
        });
        self.phase = Phase::Searching { waiting: 0 };
    }

    pub fn handle(&mut self, input: Input) {
        if matches!(self.phase, Phase::Refused { .. }) {
            return;
        }
        match input {
            Input::Start { interests } => {
                self.interests = interests;
                self.wants_search = true;
                if self.welcomed {
                    if self.in_call() {
                        return;
                    }
                    self.join();
                }
            }
            Input::Next => {
                self.wants_search = true;
                if !self.welcomed {
                    return;
                }
                if self.in_call() {
                    self.end_call(EndReason::WeLeft);
                    self.system("You skipped the stranger.");
                }
                self.send(ClientMessage::Next);
                self.phase = Phase::Searching { waiting: 0 };
            }
            Input::Stop => {
                self.wants_search = false;
                if !self.welcomed {
                    return;
                }
                let was_active = self.in_call() || matches!(self.phase, Phase::Searching { .. });
                if self.in_call() {
                    self.end_call(EndReason::WeLeft);
                    self.system("You have disconnected.");
                }
                if was_active {
                    self.send(ClientMessage::Leave);
                }
                if !matches!(self.phase, Phase::Ended { .. }) {
                    self.phase = Phase::Idle;
                }
            }
            Input::SendChat(text) => {
                let Some(match_id) = self.current_match().cloned() else {
                    return;
                };
                let text = text.trim().to_owned();
                if text.is_empty() {
                    return;
                }
                let text: String = text
                    .chars()
                    .take(peer_stream_shared::limits::MAX_CHAT_CHARS)
                    .collect();
                self.send(ClientMessage::Chat {
                    match_id,
                    text: text.clone(),
                });
                self.notify(Notice::Chat {
                    from_me: true,
                    text,
                });
            }
            Input::Typing(active) => {
                if let Some(match_id) = self.current_match().cloned() {
                    self.send(ClientMessage::Typing { match_id, active });
                }
            }
            Input::Report(reason) => {
                let Some(match_id) = self.current_match().cloned().or(self.last_match.clone())
                else {
                    return;
                };
                self.send(ClientMessage::Report { match_id, reason });
                self.system("Thanks. The stranger was reported.");
                if self.in_call() {
                    self.handle(Input::Next);
                }
            }
            Input::ServerConnected => {
                self.welcomed = false;
                self.send(ClientMessage::Hello {
                    version: peer_stream_shared::PROTOCOL_VERSION,
                    client: self.client_name.clone(),
                    counts: false,
                });
            }
            Input::ServerLost => {
                self.welcomed = false;
                if self.in_call() {
                    self.end_call(EndReason::ServerLost);
                    self.system("Lost the connection to the server.");
                }
                self.phase = Phase::Reconnecting;
            }
            Input::Server(msg) => self.on_server(msg),
            Input::PeerConnected(id) => {
                if let Phase::Connecting { match_id, .. } = &self.phase {
                    if *match_id == id {
                        self.phase = Phase::Live { match_id: id };
                    }
                }
            }
            Input::PeerFailed(id) => {
                if self.current_match() == Some(&id) {
                    self.end_call(EndReason::ConnectionFailed);
                    self.system("The connection to the stranger failed.");
                    if self.wants_search {
                        self.send(ClientMessage::Next);
                        self.phase = Phase::Searching { waiting: 0 };
                    }
                }
            }
        }
    }

    fn on_server(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::Welcome { online, .. } => {
                self.welcomed = true;
                self.notify(Notice::Online(online));
                if self.wants_search {
                    self.join();
                } else {
                    self.phase = Phase::Idle;
                }
            }
            ServerMessage::Queued { waiting } => {
                if matches!(self.phase, Phase::Searching { .. }) {
                    self.phase = Phase::Searching { waiting };
                }
            }
            ServerMessage::Matched {
                match_id,
                role,
                common_interests,
                ice_servers,
                ..
            } => {
                if !self.wants_search {
                    // We pressed Stop while the match was being made: leave it at once.
                    self.send(ClientMessage::Leave);
                    return;
                }
                if self.in_call() {
                    self.out.push_back(Output::StopPeer);
                }
                self.last_match = Some(match_id.clone());
                self.phase = Phase::Connecting {
                    match_id: match_id.clone(),
                    role,
                };
                // Matched first: the UI starts a fresh transcript with it.
                self.notify(Notice::Matched {
                    common_interests: common_interests.clone(),
                });
                self.system("You're now chatting with a random stranger. Say hi!");
                if !common_interests.is_empty() {
                    self.system(format!("You both like: {}", common_interests.join(", ")));
                }
                self.out.push_back(Output::StartPeer {
                    match_id,
                    role,
                    ice_servers,
                });
            }
            ServerMessage::Signal { match_id, payload } => {
                if self.current_match() == Some(&match_id) {
                    self.out.push_back(Output::PeerSignal { match_id, payload });
                }
            }
            ServerMessage::Chat { match_id, text } => {
                if self.current_match() == Some(&match_id) {
                    self.notify(Notice::StrangerTyping(false));
                    self.notify(Notice::Chat {
                        from_me: false,
                        text,
                    });
                }
            }
            ServerMessage::Typing { match_id, active } => {
                if self.current_match() == Some(&match_id) {
                    self.notify(Notice::StrangerTyping(active));
                }
            }
            ServerMessage::PartnerLeft { match_id, reason } => {
                if self.current_match() != Some(&match_id) {
                    return;
                }
                self.end_call(EndReason::PartnerLeft(reason));
                self.notify(Notice::StrangerTyping(false));
                self.system(match reason {
                    PartnerLeftReason::Skipped => "Stranger skipped to someone new.",
                    PartnerLeftReason::Left => "Stranger has disconnected.",
                    PartnerLeftReason::Disconnected => "Stranger's connection was lost.",
                });
                if self.auto_requeue && self.wants_search {
                    self.join();
                }
            }
            ServerMessage::Error { code, message } => {
                match code {
                    ErrorCode::Banned | ErrorCode::VersionUnsupported => {
                        if self.in_call() {
                            self.out.push_back(Output::StopPeer);
                        }
                        self.wants_search = false;
                        self.phase = Phase::Refused {
                            code,
                            message: message.clone(),
                        };
                    }
                    ErrorCode::NotInMatch => {
                        // A race with the partner leaving; partner_left follows.
                    }
                    _ => {}
                }
                self.notify(Notice::Error { code, message });
            }
            // Replies to requests this machine does not send yet.
            ServerMessage::Counts { .. } | ServerMessage::IceServers { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut Session) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn sends(outs: &[Output]) -> Vec<ClientMessage> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Send(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn welcomed() -> Session {
        let mut s = Session::new("test/1", true);
        s.handle(Input::ServerConnected);
        s.handle(Input::Server(ServerMessage::Welcome {
            version: 1,
            session_id: "me".into(),
            online: 3,
        }));
        drain(&mut s);
        s
    }

    fn matched(s: &mut Session, id: &str, role: Role) {
        s.handle(Input::Server(ServerMessage::Matched {
            match_id: id.into(),
            role,
            common_interests: vec!["music".into()],
            ice_servers: vec![],
            resumed: false,
        }));
    }

    #[test]
    fn hello_then_join_after_start() {
        let mut s = Session::new("test/1", true);
        s.handle(Input::Start {
            interests: vec!["music".into()],
        });
        assert!(drain(&mut s).is_empty(), "nothing before the socket is up");
        s.handle(Input::ServerConnected);
        assert!(matches!(
            sends(&drain(&mut s))[..],
            [ClientMessage::Hello { version: 1, .. }]
        ));
        s.handle(Input::Server(ServerMessage::Welcome {
            version: 1,
            session_id: "x".into(),
            online: 1,
        }));
        assert_eq!(
            sends(&drain(&mut s)),
            vec![ClientMessage::Join {
                interests: vec!["music".into()]
            }]
        );
        s.handle(Input::Server(ServerMessage::Queued { waiting: 4 }));
        assert_eq!(s.phase(), &Phase::Searching { waiting: 4 });
    }

    #[test]
    fn full_call_lifecycle() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        drain(&mut s);
        matched(&mut s, "m1", Role::Offerer);
        let outs = drain(&mut s);
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::StartPeer {
                role: Role::Offerer,
                ..
            }
        )));
        assert!(outs.iter().any(
            |o| matches!(o, Output::Notify(Notice::System(t)) if t == "You both like: music")
        ));
        assert!(matches!(s.phase(), Phase::Connecting { .. }));
        s.handle(Input::PeerConnected("m1".into()));
        assert_eq!(
            s.phase(),
            &Phase::Live {
                match_id: "m1".into()
            }
        );

        s.handle(Input::SendChat("  hi there ".into()));
        assert_eq!(
            sends(&drain(&mut s)),
            vec![ClientMessage::Chat {
                match_id: "m1".into(),
                text: "hi there".into()
            }]
        );
        s.handle(Input::Server(ServerMessage::Chat {
            match_id: "m1".into(),
            text: "yo".into(),
        }));
        assert!(drain(&mut s).contains(&Output::Notify(Notice::Chat {
            from_me: false,
            text: "yo".into()
        })));

        s.handle(Input::Server(ServerMessage::PartnerLeft {
            match_id: "m1".into(),
            reason: PartnerLeftReason::Left,
        }));
        let outs = drain(&mut s);
        assert!(outs.contains(&Output::StopPeer));
        assert!(
            sends(&outs).contains(&ClientMessage::Join { interests: vec![] }),
            "auto requeue"
        );
        assert_eq!(s.phase(), &Phase::Searching { waiting: 0 });
    }

    #[test]
    fn stale_signals_and_chat_are_dropped() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        matched(&mut s, "new", Role::Answerer);
        drain(&mut s);
        s.handle(Input::Server(ServerMessage::Signal {
            match_id: "old".into(),
            payload: serde_json::json!({"kind":"offer","sdp":"x"}),
        }));
        s.handle(Input::Server(ServerMessage::Chat {
            match_id: "old".into(),
            text: "ghost".into(),
        }));
        assert!(drain(&mut s).is_empty());
        s.handle(Input::Server(ServerMessage::Signal {
            match_id: "new".into(),
            payload: serde_json::json!({"kind":"offer","sdp":"x"}),
        }));
        assert!(matches!(drain(&mut s)[..], [Output::PeerSignal { .. }]));
        s.handle(Input::PeerConnected("old".into()));
        assert!(matches!(s.phase(), Phase::Connecting { .. }));
    }

    #[test]
    fn next_skips_and_requeues_stop_leaves() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        matched(&mut s, "m1", Role::Offerer);
        drain(&mut s);
        s.handle(Input::Next);
        let outs = drain(&mut s);
        assert!(outs.contains(&Output::StopPeer));
        assert_eq!(sends(&outs), vec![ClientMessage::Next]);
        assert!(matches!(s.phase(), Phase::Searching { .. }));
        matched(&mut s, "m2", Role::Answerer);
        drain(&mut s);
        s.handle(Input::Stop);
        let outs = drain(&mut s);
        assert!(outs.contains(&Output::StopPeer));
        assert_eq!(sends(&outs), vec![ClientMessage::Leave]);
        assert_eq!(
            s.phase(),
            &Phase::Ended {
                reason: EndReason::WeLeft
            }
        );
        // A match that arrives after Stop is left at once.
        matched(&mut s, "m3", Role::Answerer);
        assert_eq!(sends(&drain(&mut s)), vec![ClientMessage::Leave]);
    }

    #[test]
    fn server_loss_rejoins_after_reconnect() {
        let mut s = welcomed();
        s.handle(Input::Start {
            interests: vec!["go".into()],
        });
        matched(&mut s, "m1", Role::Offerer);
        drain(&mut s);
        s.handle(Input::ServerLost);
        assert!(drain(&mut s).contains(&Output::StopPeer));
        assert_eq!(s.phase(), &Phase::Reconnecting);
        s.handle(Input::ServerConnected);
        s.handle(Input::Server(ServerMessage::Welcome {
            version: 1,
            session_id: "again".into(),
            online: 1,
        }));
        let msgs = sends(&drain(&mut s));
        assert!(matches!(msgs[0], ClientMessage::Hello { .. }));
        assert_eq!(
            msgs[1],
            ClientMessage::Join {
                interests: vec!["go".into()]
            }
        );
    }

    #[test]
    fn report_names_the_last_partner_and_skips() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        matched(&mut s, "m1", Role::Offerer);
        drain(&mut s);
        s.handle(Input::Report("spam".into()));
        let msgs = sends(&drain(&mut s));
        assert_eq!(
            msgs,
            vec![
                ClientMessage::Report {
                    match_id: "m1".into(),
                    reason: "spam".into()
                },
                ClientMessage::Next
            ]
        );
    }

    #[test]
    fn banned_is_final() {
        let mut s = welcomed();
        s.handle(Input::Server(ServerMessage::Error {
            code: ErrorCode::Banned,
            message: "no".into(),
        }));
        assert!(matches!(s.phase(), Phase::Refused { .. }));
        s.handle(Input::Start { interests: vec![] });
        assert!(drain(&mut s).iter().all(|o| !matches!(o, Output::Send(_))));
    }
}
