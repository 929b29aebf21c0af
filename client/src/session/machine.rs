//! The chat session as a sans-I/O state machine: feed it [`Input`]s (what the user,
//! the server and the peer connection did), drain [`Output`]s (what to send, what to
//! start or stop). No sockets, no clocks, no threads, so every transition is unit-tested.
//!
//! Phases: idle → searching → matched → connecting → live → ended, with reconnecting
//! when the server is lost, and service busy when a cluster node cannot queue us
//! (`error` `unavailable`: its shared store is unreachable) and `join` is re-sent
//! with backoff. The machine also remembers whether the user *wants* to be
//! searching, so after a server restart it re-joins the queue on its own.
//!
//! A lost server connection does not end a call: media flows peer to peer, and the
//! server keeps the session for its resume window. The machine keeps the call (or the
//! search) and the `resume_token` of the last `welcome`, says `hello` with `resume` on
//! the next connection, and only ends what it kept when the answer is a new session.

use peer_stream_shared::{
    CallPath, ClientMessage, ErrorCode, IceServer, MatchId, NextReason, PartnerLeftReason, Role,
    ServerMessage,
};
use serde_json::Value;
use std::collections::VecDeque;
use std::time::Duration;

/// How long after the user's own Next an Undo is offered (the server enforces the same
/// window from when it receives `next`, which is later, so the client never asks late).
pub const UNDO_WINDOW: Duration = Duration::from_secs(5);

/// How long a call may take to connect after `matched`, or to come back after its
/// peer connection reported disconnected, before this side gives up on it (ends the
/// match with `next` reason `connection_failed` and searches again).
pub const PEER_GIVE_UP: Duration = Duration::from_secs(10);

/// What a call that could not connect (or come back) says when it tries once more,
/// through the TURN relay only, before giving up (see [`Status::relay_retry`]).
pub const RELAY_RETRY_LINE: &str = "Still no connection — trying once more through a relay server…";

/// What the app shows (and logs as a system line) while the server cannot queue it and
/// `join` is re-sent with backoff (see [`Phase::ServiceBusy`]).
pub const SERVICE_BUSY_LINE: &str = "Service busy — retrying";

/// The wait before the first `join` re-sent after `unavailable`; each further one waits
/// twice as long, up to [`JOIN_RETRY_MAX`].
pub const JOIN_RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest wait between two re-sent `join`s (before jitter).
pub const JOIN_RETRY_MAX: Duration = Duration::from_secs(15);

/// The wait before re-sending `join` for the `attempt`-th `unavailable` in a row
/// (1-based): 1 s, 2 s, 4 s, 8 s, then 15 s, each scaled by 0.75–1.25 as `jitter` in
/// [0, 1) says, so that every app turned away by one outage does not come back in step.
/// The driver draws `jitter` (the machine has no randomness, as it has no clock).
pub fn join_retry_delay(attempt: u32, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    let base = JOIN_RETRY_FIRST
        .saturating_mul(1u32 << doublings)
        .min(JOIN_RETRY_MAX);
    base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A re-sent `join` that is due (see [`Status::join_retry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinRetry {
    /// Its number: it changes whenever a retry is armed, so the driver restarts its sleep.
    pub generation: u64,
    /// How many `unavailable` answers came in a row: the driver waits
    /// [`join_retry_delay`]`(attempt, jitter)` before it hands back
    /// [`Input::JoinRetry`]`(generation)`.
    pub attempt: u32,
}

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
    /// The user is searching but the server could not queue us: it answered `join` or
    /// `next` with `error` `unavailable` (a cluster node whose shared store is
    /// unreachable; the server holds us idle). The UI says [`SERVICE_BUSY_LINE`]; the
    /// machine re-sends `join` after a growing wait (see [`Status::join_retry`]) until
    /// `queued` or `matched`, Stop or Next. `retries`: the `join`s re-sent so far since
    /// this phase began.
    ServiceBusy { retries: u32 },
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
    /// The peer connection for `match_id` lost its path (ICE disconnected): the call
    /// shows "reconnecting" and the offerer restarts ICE; [`Input::PeerConnected`] ends it.
    PeerDisconnected(MatchId),
    /// The give-up timer numbered `generation` (see [`Status::peer_timer`]) ran out. The
    /// driver sends it [`PEER_GIVE_UP`] after the timer was armed. With a TURN server
    /// and the relay-only retry still unused, the first one starts that retry instead
    /// of giving up (see [`Status::relay_retry`]).
    PeerTimeout(u64),
    /// The first remote video frame of `match_id` was decoded: `path` is the selected
    /// local ICE candidate's type, `setup_ms` the time from `matched` to that frame.
    /// The machine sends `call_report` once per match, only for the current one.
    FirstFrame {
        match_id: MatchId,
        path: CallPath,
        setup_ms: Option<u64>,
    },
    /// Bring back the stranger skipped by the last Next (offered for [`UNDO_WINDOW`]).
    UndoNext,
    /// The undo window numbered `generation` (see [`Status::undo`]) is over. The
    /// driver sends it [`UNDO_WINDOW`] after the window opened; the machine has no clock.
    UndoExpired(u64),
    /// Never be matched with the current (or last) stranger again.
    Block,
    /// Hide (true) or show again (false) the stranger's chat lines for this call.
    MuteChat(bool),
    /// The wait before the re-sent `join` numbered `generation` (see
    /// [`Status::join_retry`]) is over: the driver sends it [`join_retry_delay`] after
    /// the retry was armed.
    JoinRetry(u64),
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
    /// How many people are online and waiting changed (from `welcome`, `queued` or
    /// `counts`); the newest figures are also in [`Status`].
    Counts {
        online: Option<u64>,
        waiting: Option<u64>,
    },
    /// A new match began (common interests).
    Matched {
        common_interests: Vec<String>,
    },
}

/// What the UI shows besides the phase and the transcript; the driver copies it into
/// the engine state whenever it changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// People connected to the server (this one included), from `welcome`/`counts`.
    pub online: Option<u64>,
    /// People in the queue, from `queued`/`counts`.
    pub waiting: Option<u64>,
    /// An Undo is offered: the number of this undo window (it changes with every Next
    /// that skipped someone, so the driver restarts its timer).
    pub undo: Option<u64>,
    /// The stranger's chat lines are hidden for this call.
    pub chat_muted: bool,
    /// The current call is a resumed one (an undone Next, on either side).
    pub resumed: bool,
    /// There is a current or last stranger who is not blocked yet.
    pub can_block: bool,
    /// The live call lost its path to the stranger and is reconnecting (the UI says
    /// "Connection to the stranger lost — reconnecting…"; not the server's state).
    pub peer_lost: bool,
    /// A give-up timer is running: its number (it changes whenever the timer is armed
    /// again, so the driver restarts its [`PEER_GIVE_UP`] sleep).
    pub peer_timer: Option<u64>,
    /// Numbers the ICE restarts this side asked for (the offerer, when the path was
    /// lost): when it changes, the driver restarts ICE on the current call and sends
    /// the new offer as a normal `signal`. (A status, not an [`Output`], so drivers
    /// written against the older outputs keep compiling.)
    pub ice_restart: u64,
    /// The call is in its one relay-only retry (issue #8): it failed to connect, or to
    /// come back, within [`PEER_GIVE_UP`] although the signaling server offered a TURN
    /// server and `--ice-policy` was `all`. The driver switches the peer connection to
    /// relay candidates only *before* it hands the peer any further offer or restart
    /// (a fresh TURN allocation; host and server-reflexive candidates are neither
    /// gathered nor signalled); the offerer restarts ICE once more ([`Self::ice_restart`]
    /// changes in the same step), the answerer takes the next offer; the give-up timer
    /// is armed again, so the retry has its own [`PEER_GIVE_UP`] window and the call
    /// gives up for good at most 2 × [`PEER_GIVE_UP`] after it started failing. Stays set
    /// until the match ends: a match retries once.
    pub relay_retry: bool,
    /// A re-sent `join` is due (in [`Phase::ServiceBusy`]): when it changes to `Some`,
    /// the driver sleeps [`join_retry_delay`] and then hands back [`Input::JoinRetry`];
    /// `None` cancels it (Stop, Next, a new connection, `queued` or `matched`).
    pub join_retry: Option<JoinRetry>,
}

/// Whether an ICE server entry names a TURN server webrtc 0.21 can allocate on: a
/// `turn:` URL over UDP (it skips `turns:` and TURN over TCP, so a relay-only retry
/// through those could never connect).
fn usable_turn_server(server: &IceServer) -> bool {
    server.urls.iter().any(|url| {
        let url = url.trim().to_ascii_lowercase();
        url.starts_with("turn:") && !url.contains("transport=tcp")
    })
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
    /// The last match was blocked already.
    last_blocked: bool,
    /// Counts, undo offer, mute: see [`Status`].
    status: Status,
    /// Numbers the undo windows.
    undo_generation: u64,
    /// We sent `undo_next` and wait for `matched` (resumed) or `undo_unavailable`.
    undo_pending: bool,
    /// The last match a `call_report` was sent for (one per match).
    call_reported: Option<MatchId>,
    /// Our role in the current call (the offerer restarts ICE).
    call_role: Option<Role>,
    /// Numbers the give-up timers.
    peer_timer_generation: u64,
    /// Whether a failed call may retry relay-only at all (`--ice-policy all`); see
    /// [`Session::set_relay_retry`].
    relay_retry_allowed: bool,
    /// The current match's ICE servers include a TURN server the peer connection can use.
    turn_offered: bool,
    /// Offers from the partner since the call was matched or last connected: the first
    /// sets the call up (or restarts ICE after a lost path), a second one in the same
    /// attempt is the offerer's relay-only retry, which the answerer follows.
    offers_this_attempt: u32,
    /// The `resume_token` of the last `welcome`: sent in the next `hello`'s `resume`.
    resume_token: Option<String>,
    /// Set while the server connection is lost and the server may still hold our
    /// session: what we were doing when it was lost.
    away: Option<Away>,
    /// A `join` or `next` was sent on this connection and neither `queued`, `matched`
    /// nor `unavailable` answered it yet: an `unavailable` now is its answer (and not a
    /// relay that could not reach a partner on another node).
    join_pending: bool,
    /// `unavailable` answers to our `join`/`next` in a row (the backoff's exponent);
    /// back to 0 on `queued`, `matched`, Stop and a new connection.
    busy_attempts: u32,
    /// Numbers the join retries.
    join_retry_generation: u64,
    out: VecDeque<Output>,
}

/// What the session was doing when its server connection was lost.
#[derive(Debug)]
struct Away {
    phase: Phase,
    /// The match the server thinks we are in.
    server_match: Option<MatchId>,
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
            last_blocked: false,
            status: Status::default(),
            undo_generation: 0,
            undo_pending: false,
            call_reported: None,
            call_role: None,
            peer_timer_generation: 0,
            relay_retry_allowed: true,
            turn_offered: false,
            offers_this_attempt: 0,
            resume_token: None,
            away: None,
            join_pending: false,
            busy_attempts: 0,
            join_retry_generation: 0,
            out: VecDeque::new(),
        }
    }

    /// Counts, the undo offer, mute and block availability.
    pub fn status(&self) -> &Status {
        &self.status
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn set_auto_requeue(&mut self, on: bool) {
        self.auto_requeue = on;
    }

    /// Whether a call that failed may retry once through the TURN relay only (on by
    /// default; off with `--ice-policy relay`, whose calls are relay-only already).
    pub fn set_relay_retry(&mut self, allowed: bool) {
        self.relay_retry_allowed = allowed;
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
        self.clear_peer_watch();
        self.status.relay_retry = false;
    }

    /// Starts (or restarts) the give-up timer of the current call.
    fn arm_peer_timer(&mut self) {
        self.peer_timer_generation += 1;
        self.status.peer_timer = Some(self.peer_timer_generation);
    }

    fn clear_peer_watch(&mut self) {
        self.status.peer_timer = None;
        self.status.peer_lost = false;
    }

    /// The call failed (its timer ran out, or ICE failed): retry relay-only once when
    /// that can help, else give up.
    fn call_failed(&mut self) {
        if self.status.relay_retry {
            // The retry is running: its own timer ends it (an ICE failure reported now
            // may be the previous attempt's, crossing the restart).
            return;
        }
        if !self.relay_retry_allowed || !self.turn_offered || self.current_match().is_none() {
            self.give_up_call();
            return;
        }
        self.start_relay_retry();
    }

    /// Enters the one relay-only retry of this match (see [`Status::relay_retry`]).
    fn start_relay_retry(&mut self) {
        self.status.relay_retry = true;
        self.arm_peer_timer();
        self.system(RELAY_RETRY_LINE);
        if self.call_role == Some(Role::Offerer) {
            self.status.ice_restart += 1;
        }
    }

    /// The call's transport never connected or did not come back: end the match so
    /// the partner hears at once (`partner_left` reason `disconnected`), report it as
    /// failed, say it plainly and search again.
    fn give_up_call(&mut self) {
        let Some(match_id) = self.current_match().cloned() else {
            return;
        };
        self.end_call(EndReason::ConnectionFailed);
        self.system("Couldn't connect to this stranger — finding someone new.");
        self.wants_search = true;
        self.status.undo = None;
        self.undo_pending = false;
        if !self.welcomed {
            // Told on resume (see `resumed`): the server still thinks we are in it.
            return;
        }
        if self.call_reported.as_ref() != Some(&match_id) {
            self.call_reported = Some(match_id.clone());
            self.send(ClientMessage::CallReport {
                match_id,
                path: CallPath::Failed,
                setup_ms: None,
            });
        }
        self.send_queue_request(ClientMessage::Next {
            reason: Some(NextReason::ConnectionFailed),
        });
        self.phase = Phase::Searching { waiting: 0 };
    }

    fn set_counts(&mut self, online: Option<u64>, waiting: Option<u64>) {
        let (online, waiting) = (
            online.or(self.status.online),
            waiting.or(self.status.waiting),
        );
        if (online, waiting) != (self.status.online, self.status.waiting) {
            self.status.online = online;
            self.status.waiting = waiting;
            self.notify(Notice::Counts { online, waiting });
        }
    }

    fn update_can_block(&mut self) {
        self.status.can_block = self.last_match.is_some() && !self.last_blocked;
    }

    /// Skips the current stranger (or the wait). `offer_undo`: the user's own Next,
    /// which may be undone; not after Report or a failed connection.
    fn skip(&mut self, offer_undo: bool) {
        self.wants_search = true;
        if !self.welcomed {
            return;
        }
        let skipped = self.in_call();
        if skipped {
            self.end_call(EndReason::WeLeft);
            self.system("You skipped the stranger.");
        }
        self.send_queue_request(ClientMessage::Next { reason: None });
        self.phase = Phase::Searching { waiting: 0 };
        self.undo_pending = false;
        if skipped && offer_undo {
            self.undo_generation += 1;
            self.status.undo = Some(self.undo_generation);
        } else {
            self.status.undo = None;
        }
    }

    fn join(&mut self) {
        self.send_queue_request(ClientMessage::Join {
            interests: self.interests.clone(),
        });
        self.phase = Phase::Searching { waiting: 0 };
    }

    /// Sends `join` or `next`, whose answer is `queued`, `matched` or `unavailable`; a
    /// retry still waiting is dropped (this request replaces it).
    fn send_queue_request(&mut self, msg: ClientMessage) {
        self.status.join_retry = None;
        self.join_pending = true;
        self.send(msg);
    }

    /// The server cannot queue us right now (`unavailable` answered our `join` or
    /// `next`; it holds us idle): say so once, and re-send `join` after the next,
    /// longer wait.
    fn service_busy(&mut self) {
        self.busy_attempts = self.busy_attempts.saturating_add(1);
        let retries = match self.phase {
            Phase::ServiceBusy { retries } => retries,
            _ => {
                self.system(SERVICE_BUSY_LINE);
                0
            }
        };
        self.phase = Phase::ServiceBusy { retries };
        self.join_retry_generation += 1;
        self.status.join_retry = Some(JoinRetry {
            generation: self.join_retry_generation,
            attempt: self.busy_attempts,
        });
    }

    /// The server queued or matched us (or the connection is new, or the user
    /// stopped): the next `unavailable` starts the backoff from its first wait.
    fn service_available(&mut self) {
        self.join_pending = false;
        self.busy_attempts = 0;
        self.status.join_retry = None;
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
            Input::Next => self.skip(true),
            Input::Stop => {
                self.wants_search = false;
                self.status.undo = None;
                self.service_available();
                if !self.welcomed {
                    return;
                }
                // After partner_left too: the server then knows we stopped, so an undo of
                // the stranger who skipped us cannot pull us back into a call. While the
                // service is busy, too: a re-sent `join` may be on its way.
                let was_active = self.in_call()
                    || matches!(
                        self.phase,
                        Phase::Searching { .. } | Phase::Ended { .. } | Phase::ServiceBusy { .. }
                    );
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
                if !self.welcomed {
                    // The call goes on while we reconnect, but nothing reaches the server.
                    self.system("Not sent: reconnecting to the server…");
                    return;
                }
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
                if !self.welcomed {
                    return;
                }
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
                // A reported stranger is not offered back.
                self.status.undo = None;
                if self.in_call() {
                    self.skip(false);
                }
            }
            Input::UndoNext => {
                if self.status.undo.take().is_none() || !self.welcomed {
                    return;
                }
                self.undo_pending = true;
                self.send(ClientMessage::UndoNext);
                self.system("Bringing the stranger back…");
            }
            Input::UndoExpired(generation) => {
                if self.status.undo == Some(generation) {
                    self.status.undo = None;
                }
            }
            Input::Block => {
                if self.last_blocked || !self.welcomed {
                    return;
                }
                let Some(match_id) = self.current_match().cloned().or(self.last_match.clone())
                else {
                    return;
                };
                self.send(ClientMessage::Block { match_id });
                self.last_blocked = true;
                // Undo would bring the blocked stranger back.
                self.status.undo = None;
                self.update_can_block();
                self.system("You won't be matched with this person again.");
            }
            Input::MuteChat(on) => {
                if !self.in_call() || self.status.chat_muted == on {
                    return;
                }
                self.status.chat_muted = on;
                if on {
                    self.notify(Notice::StrangerTyping(false));
                    self.system(
                        "Chat muted: the stranger's messages are hidden for the rest of this call.",
                    );
                } else {
                    self.system("Chat unmuted.");
                }
            }
            Input::ServerConnected => {
                self.welcomed = false;
                // A new connection (maybe to another node): no retry carries over.
                self.service_available();
                self.send(ClientMessage::Hello {
                    version: peer_stream_shared::PROTOCOL_VERSION,
                    client: self.client_name.clone(),
                    counts: true,
                    resume: self.resume_token.clone(),
                });
            }
            Input::ServerLost => {
                self.welcomed = false;
                // Nothing can be re-sent without a connection; the welcome that follows
                // searches again (see `resumed`).
                self.status.join_retry = None;
                self.join_pending = false;
                if self.resume_token.is_some() {
                    // The server may keep our session for a while: keep the call (its
                    // media is peer to peer) or the search, and ask for them back.
                    if self.away.is_none() {
                        self.away = Some(Away {
                            phase: self.phase.clone(),
                            server_match: self.current_match().cloned(),
                        });
                    }
                    if !self.in_call() && !matches!(self.phase, Phase::Searching { .. }) {
                        self.phase = Phase::Reconnecting;
                    }
                } else {
                    self.session_lost();
                    self.phase = Phase::Reconnecting;
                }
            }
            Input::Server(msg) => self.on_server(msg),
            Input::PeerConnected(id) => {
                if self.current_match() != Some(&id) {
                    return;
                }
                if self.status.peer_lost {
                    self.system("Reconnected to the stranger.");
                }
                self.clear_peer_watch();
                self.offers_this_attempt = 0;
                if let Phase::Connecting { .. } = &self.phase {
                    self.phase = Phase::Live { match_id: id };
                }
            }
            Input::PeerDisconnected(id) => {
                if !matches!(&self.phase, Phase::Live { match_id } if *match_id == id) {
                    // Still connecting: the timer armed at `matched` keeps running.
                    return;
                }
                if self.status.peer_lost {
                    return;
                }
                self.status.peer_lost = true;
                self.arm_peer_timer();
                self.system("Connection to the stranger lost — reconnecting…");
                if self.call_role == Some(Role::Offerer) {
                    self.status.ice_restart += 1;
                }
            }
            Input::PeerTimeout(generation) => {
                if self.status.peer_timer == Some(generation) {
                    self.status.peer_timer = None;
                    if self.status.relay_retry {
                        self.give_up_call();
                    } else {
                        self.call_failed();
                    }
                }
            }
            Input::FirstFrame {
                match_id,
                path,
                setup_ms,
            } => {
                if self.current_match() == Some(&match_id)
                    && self.call_reported.as_ref() != Some(&match_id)
                {
                    self.call_reported = Some(match_id.clone());
                    self.send(ClientMessage::CallReport {
                        match_id,
                        path,
                        setup_ms,
                    });
                }
            }
            Input::PeerFailed(id) => {
                if self.current_match() == Some(&id) {
                    self.call_failed();
                }
            }
            Input::JoinRetry(generation) => {
                if self.status.join_retry.map(|r| r.generation) != Some(generation) {
                    return; // cancelled or replaced meanwhile
                }
                self.status.join_retry = None;
                let Phase::ServiceBusy { retries } = self.phase else {
                    return;
                };
                if !self.wants_search || !self.welcomed {
                    return;
                }
                self.send_queue_request(ClientMessage::Join {
                    interests: self.interests.clone(),
                });
                self.phase = Phase::ServiceBusy {
                    retries: retries.saturating_add(1),
                };
            }
        }
    }

    /// The server session is gone: a new one cannot undo or block what the old one did,
    /// and a call we kept is over.
    fn session_lost(&mut self) {
        self.status.undo = None;
        self.undo_pending = false;
        self.last_match = None;
        self.update_can_block();
        if self.in_call() {
            self.end_call(EndReason::ServerLost);
            self.system("Lost the connection to the server.");
        }
    }

    /// `welcome` with `resumed`: the server kept our session while we were away. Catch
    /// it up with what the user did meanwhile (Stop, or a call whose media failed).
    fn resumed(&mut self, away: Away) {
        if self.phase == Phase::Reconnecting {
            self.phase = away.phase.clone();
        }
        let in_server_queue =
            away.server_match.is_none() && matches!(away.phase, Phase::Searching { .. });
        if !self.wants_search {
            // Stop was pressed while we were away.
            if self.in_call() {
                self.end_call(EndReason::WeLeft);
                self.system("You have disconnected.");
            }
            if away.server_match.is_some() || in_server_queue {
                self.send(ClientMessage::Leave);
            }
            if !matches!(self.phase, Phase::Ended { .. }) {
                self.phase = Phase::Idle;
            }
            return;
        }
        match &away.server_match {
            Some(m) if self.current_match() == Some(m) => {} // the call goes on
            Some(_) => {
                // The call ended here while we were away (its media failed).
                self.send_queue_request(ClientMessage::Next {
                    reason: Some(NextReason::ConnectionFailed),
                });
                self.phase = Phase::Searching { waiting: 0 };
            }
            None if in_server_queue => {} // still waiting in the queue
            None => self.join(),
        }
    }

    fn on_server(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::Welcome {
                online,
                resume_token,
                resumed,
                ..
            } => {
                self.welcomed = true;
                self.resume_token = resume_token;
                self.set_counts(Some(online), None);
                let away = self.away.take();
                if let (true, Some(away)) = (resumed, &away) {
                    tracing::info!(phase = ?away.phase, "server session resumed");
                }
                match (resumed, away) {
                    (true, Some(away)) => self.resumed(away),
                    (_, away) => {
                        if away.is_some() {
                            // A new session: what we kept from the old one is over.
                            self.session_lost();
                        }
                        if self.wants_search {
                            self.join();
                        } else {
                            self.phase = Phase::Idle;
                        }
                    }
                }
            }
            ServerMessage::Queued { waiting } => {
                self.service_available();
                if matches!(
                    self.phase,
                    Phase::Searching { .. } | Phase::ServiceBusy { .. }
                ) {
                    self.phase = Phase::Searching { waiting };
                }
                self.set_counts(None, Some(waiting));
            }
            ServerMessage::Counts { online, waiting } => {
                self.set_counts(Some(online), Some(waiting));
                if matches!(self.phase, Phase::Searching { .. }) {
                    self.phase = Phase::Searching { waiting };
                }
            }
            ServerMessage::Matched {
                match_id,
                role,
                common_interests,
                ice_servers,
                resumed,
            } => {
                let undone_by_us = std::mem::take(&mut self.undo_pending);
                self.service_available();
                if !self.wants_search {
                    // We pressed Stop while the match was being made: leave it at once.
                    self.send(ClientMessage::Leave);
                    return;
                }
                if self.in_call() {
                    self.out.push_back(Output::StopPeer);
                }
                self.last_match = Some(match_id.clone());
                self.last_blocked = false;
                self.update_can_block();
                self.status.chat_muted = false;
                self.status.resumed = resumed;
                // A new match does not end the undo offer (the server ends that match
                // when the undo succeeds); a resumed call is the undo itself.
                if resumed {
                    self.status.undo = None;
                }
                self.phase = Phase::Connecting {
                    match_id: match_id.clone(),
                    role,
                };
                self.call_role = Some(role);
                self.status.peer_lost = false;
                self.status.relay_retry = false;
                self.offers_this_attempt = 0;
                self.turn_offered = ice_servers.iter().any(usable_turn_server);
                // The call must connect within PEER_GIVE_UP.
                self.arm_peer_timer();
                // Matched first: the UI starts a fresh transcript with it.
                self.notify(Notice::Matched {
                    common_interests: common_interests.clone(),
                });
                if resumed && undone_by_us {
                    self.system("You're back with the previous stranger.");
                } else if resumed {
                    self.system("Stranger came back.");
                } else {
                    self.system("You're now chatting with a random stranger. Say hi!");
                }
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
                    // A new offer in a live call is the partner restarting ICE: its path
                    // to us was lost, so ours is too, even if our own ICE has not noticed
                    // yet. Say so (and arm the give-up timer) as on our own disconnect.
                    let offer = payload.get("kind").and_then(|k| k.as_str()) == Some("offer");
                    let restart = offer
                        && matches!(&self.phase, Phase::Live { match_id: live } if *live == match_id);
                    if restart {
                        self.handle(Input::PeerDisconnected(match_id.clone()));
                    }
                    if offer {
                        self.offers_this_attempt = self.offers_this_attempt.saturating_add(1);
                        // A second offer before the call (re)connected is the offerer's
                        // relay-only retry: follow it (relay candidates only, a fresh
                        // window) before the peer applies it, unless our own timer
                        // already started the retry.
                        if self.offers_this_attempt >= 2
                            && self.call_role == Some(Role::Answerer)
                            && !self.status.relay_retry
                            && self.relay_retry_allowed
                            && self.turn_offered
                        {
                            self.start_relay_retry();
                        }
                    }
                    self.out.push_back(Output::PeerSignal { match_id, payload });
                }
            }
            ServerMessage::Chat { match_id, text } => {
                if self.current_match() == Some(&match_id) && !self.status.chat_muted {
                    self.notify(Notice::StrangerTyping(false));
                    self.notify(Notice::Chat {
                        from_me: false,
                        text,
                    });
                }
            }
            ServerMessage::Typing { match_id, active } => {
                if self.current_match() == Some(&match_id) && !self.status.chat_muted {
                    self.notify(Notice::StrangerTyping(active));
                }
            }
            ServerMessage::PartnerLeft { match_id, reason } => {
                if self.current_match() != Some(&match_id) {
                    return;
                }
                self.end_call(EndReason::PartnerLeft(reason));
                self.status.chat_muted = false;
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
                    ErrorCode::Unavailable if !self.in_call() => {
                        // The answer to our `join`/`next`: the server holds us idle.
                        if std::mem::take(&mut self.join_pending) && self.wants_search {
                            self.service_busy();
                        } else {
                            // A relay that crossed the end of its match (or Stop), or a
                            // second answer while a retry is already armed.
                            tracing::debug!(%message, "unavailable, not for a join");
                        }
                        return;
                    }
                    ErrorCode::Invalid if self.in_call() => {
                        // Our auto-requeue `join` crossed a `matched`: after someone's undo
                        // the server re-queues us itself and may pair us before the join
                        // arrives. Nothing the person needs to see.
                        tracing::debug!(%message, "join refused during a match");
                        return;
                    }
                    ErrorCode::UndoUnavailable => {
                        // We keep our place (queue or new call); say it plainly.
                        self.undo_pending = false;
                        self.system("Couldn't bring them back — they've moved on.");
                        return;
                    }
                    _ => {}
                }
                self.notify(Notice::Error { code, message });
            }
            // The setup check asks for these with its own connection, not this machine.
            ServerMessage::IceServers { .. } => {}
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
            resume_token: None,
            resumed: false,
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

    fn welcome(token: &str, resumed: bool) -> Input {
        Input::Server(ServerMessage::Welcome {
            version: 1,
            session_id: "me".into(),
            online: 2,
            resume_token: Some(token.into()),
            resumed,
        })
    }

    /// Welcomed with token `t1`, searching, matched in `m1`, live.
    fn live_with_token() -> Session {
        let mut s = Session::new("test/1", false);
        s.handle(Input::Start { interests: vec![] });
        s.handle(Input::ServerConnected);
        s.handle(welcome("t1", false));
        matched(&mut s, "m1", Role::Offerer);
        s.handle(Input::PeerConnected("m1".into()));
        drain(&mut s);
        assert_eq!(
            s.phase(),
            &Phase::Live {
                match_id: "m1".into()
            }
        );
        s
    }

    /// The server connection drops and comes back; returns what the machine sent.
    fn lose_and_reconnect(s: &mut Session) -> Vec<Output> {
        s.handle(Input::ServerLost);
        s.handle(Input::ServerLost); // a failed attempt changes nothing
        s.handle(Input::ServerConnected);
        drain(s)
    }

    #[test]
    fn a_lost_server_connection_keeps_the_call_and_resumes_it() {
        let mut s = live_with_token();
        s.handle(Input::ServerLost);
        let outs = drain(&mut s);
        assert!(
            !outs.contains(&Output::StopPeer),
            "the call goes on: {outs:?}"
        );
        assert_eq!(
            s.phase(),
            &Phase::Live {
                match_id: "m1".into()
            }
        );
        // Chat cannot reach the server meanwhile: said plainly, not sent.
        s.handle(Input::SendChat("hi".into()));
        let outs = drain(&mut s);
        assert!(sends(&outs).is_empty(), "{outs:?}");
        assert!(outs.contains(&Output::Notify(Notice::System(
            "Not sent: reconnecting to the server…".into()
        ))));
        s.handle(Input::ServerConnected);
        assert_eq!(
            sends(&drain(&mut s)),
            vec![ClientMessage::Hello {
                version: 1,
                client: "test/1".into(),
                counts: true,
                resume: Some("t1".into()),
            }]
        );
        s.handle(welcome("t2", true));
        let outs = drain(&mut s);
        assert!(sends(&outs).is_empty(), "no join, no next: {outs:?}");
        assert!(!outs.contains(&Output::StopPeer));
        assert_eq!(
            s.phase(),
            &Phase::Live {
                match_id: "m1".into()
            }
        );
        // The next loss resumes with the new token.
        let outs = lose_and_reconnect(&mut s);
        assert!(matches!(
            &sends(&outs)[..],
            [ClientMessage::Hello { resume: Some(t), .. }] if t == "t2"
        ));
        s.handle(welcome("t3", true));
        drain(&mut s);
        s.handle(Input::SendChat("still here".into()));
        assert!(matches!(
            &sends(&drain(&mut s))[..],
            [ClientMessage::Chat { .. }]
        ));
    }

    #[test]
    fn a_new_session_after_the_loss_ends_the_kept_call_and_searches_again() {
        let mut s = live_with_token();
        lose_and_reconnect(&mut s);
        s.handle(welcome("t9", false));
        let outs = drain(&mut s);
        assert!(outs.contains(&Output::StopPeer), "{outs:?}");
        assert!(outs.contains(&Output::Notify(Notice::System(
            "Lost the connection to the server.".into()
        ))));
        assert_eq!(
            sends(&outs),
            vec![ClientMessage::Join { interests: vec![] }]
        );
        assert!(
            !s.status().can_block,
            "a new session cannot block the old stranger"
        );
    }

    #[test]
    fn a_call_that_failed_while_away_is_skipped_on_resume() {
        let mut s = live_with_token();
        s.handle(Input::ServerLost);
        s.handle(Input::PeerFailed("m1".into()));
        let outs = drain(&mut s);
        assert!(outs.contains(&Output::StopPeer));
        assert!(
            sends(&outs).is_empty(),
            "nothing reaches the server: {outs:?}"
        );
        s.handle(Input::ServerConnected);
        s.handle(welcome("t2", true));
        let outs = drain(&mut s);
        assert_eq!(
            sends(&outs)[1..],
            [ClientMessage::Next {
                reason: Some(NextReason::ConnectionFailed)
            }]
        );
        assert_eq!(s.phase(), &Phase::Searching { waiting: 0 });
    }

    #[test]
    fn stop_while_away_leaves_on_resume() {
        let mut s = live_with_token();
        s.handle(Input::ServerLost);
        s.handle(Input::Stop);
        s.handle(Input::ServerConnected);
        s.handle(welcome("t2", true));
        let outs = drain(&mut s);
        assert!(outs.contains(&Output::StopPeer));
        assert_eq!(sends(&outs)[1..], [ClientMessage::Leave]);
        assert!(matches!(s.phase(), Phase::Ended { .. } | Phase::Idle));
    }

    #[test]
    fn a_search_survives_a_lost_connection() {
        let mut s = Session::new("test/1", true);
        s.handle(Input::Start { interests: vec![] });
        s.handle(Input::ServerConnected);
        s.handle(welcome("t1", false));
        drain(&mut s);
        let outs = lose_and_reconnect(&mut s);
        assert_eq!(s.phase(), &Phase::Searching { waiting: 0 });
        assert_eq!(sends(&outs).len(), 1, "only hello: {outs:?}");
        s.handle(welcome("t2", true));
        assert!(sends(&drain(&mut s)).is_empty(), "still queued: no join");
        // A server without resuming (no token) ends it as before.
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        drain(&mut s);
        s.handle(Input::ServerLost);
        assert_eq!(s.phase(), &Phase::Reconnecting);
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
            resume_token: None,
            resumed: false,
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
        assert_eq!(sends(&outs), vec![ClientMessage::Next { reason: None }]);
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
            resume_token: None,
            resumed: false,
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
                ClientMessage::Next { reason: None }
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

    fn systems(outs: &[Output]) -> Vec<String> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Notify(Notice::System(t)) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    fn in_call(s: &mut Session, id: &str) {
        s.handle(Input::Start { interests: vec![] });
        matched(s, id, Role::Offerer);
        s.handle(Input::PeerConnected(id.into()));
        drain(s);
    }

    fn resumed(s: &mut Session, id: &str) {
        s.handle(Input::Server(ServerMessage::Matched {
            match_id: id.into(),
            role: Role::Answerer,
            common_interests: vec![],
            ice_servers: vec![],
            resumed: true,
        }));
    }

    #[test]
    fn hello_asks_for_counts_and_the_latest_counts_are_kept() {
        let mut s = Session::new("test/1", true);
        s.handle(Input::ServerConnected);
        assert_eq!(
            sends(&drain(&mut s)),
            vec![ClientMessage::Hello {
                version: 1,
                client: "test/1".into(),
                counts: true,
                resume: None,
            }]
        );
        s.handle(Input::Server(ServerMessage::Welcome {
            version: 1,
            session_id: "me".into(),
            online: 3,
            resume_token: None,
            resumed: false,
        }));
        assert!(drain(&mut s).contains(&Output::Notify(Notice::Counts {
            online: Some(3),
            waiting: None
        })));
        s.handle(Input::Server(ServerMessage::Counts {
            online: 7,
            waiting: 2,
        }));
        assert_eq!(
            drain(&mut s),
            vec![Output::Notify(Notice::Counts {
                online: Some(7),
                waiting: Some(2)
            })]
        );
        assert_eq!((s.status().online, s.status().waiting), (Some(7), Some(2)));
        // The same figures again change nothing.
        s.handle(Input::Server(ServerMessage::Counts {
            online: 7,
            waiting: 2,
        }));
        assert!(drain(&mut s).is_empty());
        // Counts keep coming in a call: the UI no longer shows the welcome value.
        in_call(&mut s, "m1");
        s.handle(Input::Server(ServerMessage::Counts {
            online: 9,
            waiting: 0,
        }));
        assert_eq!((s.status().online, s.status().waiting), (Some(9), Some(0)));
        assert!(matches!(s.phase(), Phase::Live { .. }));
        // queued updates the waiting figure and the searching phase.
        s.handle(Input::Next);
        s.handle(Input::Server(ServerMessage::Queued { waiting: 4 }));
        assert_eq!(s.phase(), &Phase::Searching { waiting: 4 });
        assert_eq!(s.status().waiting, Some(4));
        s.handle(Input::Server(ServerMessage::Counts {
            online: 9,
            waiting: 5,
        }));
        assert_eq!(s.phase(), &Phase::Searching { waiting: 5 });
    }

    #[test]
    fn undo_after_next_brings_the_stranger_back() {
        let mut s = welcomed();
        in_call(&mut s, "m1");
        assert_eq!(s.status().undo, None);
        s.handle(Input::Next);
        drain(&mut s);
        let generation = s.status().undo.expect("undo offered after Next");
        s.handle(Input::UndoNext);
        let outs = drain(&mut s);
        assert_eq!(sends(&outs), vec![ClientMessage::UndoNext]);
        assert_eq!(s.status().undo, None, "once per skip");
        s.handle(Input::UndoNext);
        assert!(sends(&drain(&mut s)).is_empty(), "no second undo");
        resumed(&mut s, "m2");
        let outs = drain(&mut s);
        assert!(outs.iter().any(|o| matches!(o, Output::StartPeer { .. })));
        assert_eq!(
            systems(&outs),
            vec!["You're back with the previous stranger.".to_string()]
        );
        assert!(s.status().resumed);
        assert!(matches!(s.phase(), Phase::Connecting { .. }));
        // The expiry of the old window changes nothing.
        s.handle(Input::UndoExpired(generation));
        assert_eq!(s.status().undo, None);
        // A resumed call is a call like any other: Next works (and can be undone).
        s.handle(Input::Next);
        assert_eq!(
            sends(&drain(&mut s)),
            vec![ClientMessage::Next { reason: None }]
        );
        assert!(s.status().undo.is_some());
        // A plain match after that is not "resumed".
        matched(&mut s, "m3", Role::Offerer);
        drain(&mut s);
        assert!(!s.status().resumed);
    }

    #[test]
    fn stop_after_the_stranger_left_tells_the_server() {
        let mut s = Session::new("test/1", false);
        s.handle(Input::ServerConnected);
        s.handle(Input::Server(ServerMessage::Welcome {
            version: 1,
            session_id: "me".into(),
            online: 2,
            resume_token: None,
            resumed: false,
        }));
        in_call(&mut s, "m1");
        s.handle(Input::Server(ServerMessage::PartnerLeft {
            match_id: "m1".into(),
            reason: PartnerLeftReason::Skipped,
        }));
        assert!(sends(&drain(&mut s)).is_empty(), "no auto-requeue here");
        s.handle(Input::Stop);
        assert_eq!(
            sends(&drain(&mut s)),
            vec![ClientMessage::Leave],
            "so an undo by the one who skipped us cannot pull us back"
        );
    }

    #[test]
    fn a_join_refused_during_a_match_is_not_shown() {
        let mut s = welcomed();
        in_call(&mut s, "m1");
        s.handle(Input::Server(ServerMessage::error(
            ErrorCode::Invalid,
            "join: already in a match",
        )));
        let outs = drain(&mut s);
        assert!(
            !outs
                .iter()
                .any(|o| matches!(o, Output::Notify(Notice::Error { .. }))),
            "{outs:?}"
        );
        assert!(s.current_match() == Some(&"m1".into()));
    }

    #[test]
    fn the_skipped_side_sees_the_stranger_come_back() {
        let mut s = welcomed();
        in_call(&mut s, "m1");
        s.handle(Input::Server(ServerMessage::PartnerLeft {
            match_id: "m1".into(),
            reason: PartnerLeftReason::Skipped,
        }));
        drain(&mut s);
        assert_eq!(s.status().undo, None, "only the one who skipped can undo");
        resumed(&mut s, "m2");
        let outs = drain(&mut s);
        assert_eq!(systems(&outs), vec!["Stranger came back.".to_string()]);
        assert!(s.status().resumed);
        assert!(s.current_match() == Some(&"m2".into()));
    }

    #[test]
    fn undo_window_expires_and_is_renewed_by_each_next() {
        let mut s = welcomed();
        in_call(&mut s, "m1");
        s.handle(Input::Next);
        let first = s.status().undo.expect("offered");
        matched(&mut s, "m2", Role::Offerer);
        assert_eq!(
            s.status().undo,
            Some(first),
            "still offered in the new call"
        );
        s.handle(Input::Next);
        let second = s.status().undo.expect("offered again");
        assert_ne!(first, second, "a new window for the new skip");
        s.handle(Input::UndoExpired(first));
        assert_eq!(s.status().undo, Some(second), "an old timer is ignored");
        s.handle(Input::UndoExpired(second));
        assert_eq!(s.status().undo, None);
        drain(&mut s);
        s.handle(Input::UndoNext);
        assert!(drain(&mut s).is_empty(), "too late: nothing is sent");
    }

    #[test]
    fn no_undo_after_report_stop_a_failed_call_or_a_next_without_a_stranger() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        s.handle(Input::Next);
        assert_eq!(s.status().undo, None, "searching: nobody was skipped");
        in_call(&mut s, "m1");
        s.handle(Input::Report("spam".into()));
        assert_eq!(s.status().undo, None, "not after Report");
        in_call(&mut s, "m2");
        s.handle(Input::PeerFailed("m2".into()));
        assert_eq!(s.status().undo, None, "not after a failed connection");
        in_call(&mut s, "m3");
        s.handle(Input::Next);
        assert!(s.status().undo.is_some());
        s.handle(Input::Stop);
        assert_eq!(s.status().undo, None, "Stop ends the offer");
        drain(&mut s);
        s.handle(Input::UndoNext);
        assert!(sends(&drain(&mut s)).is_empty());
    }

    #[test]
    fn undo_unavailable_keeps_our_place() {
        let mut s = welcomed();
        in_call(&mut s, "m1");
        s.handle(Input::Next);
        matched(&mut s, "m2", Role::Answerer);
        drain(&mut s);
        s.handle(Input::UndoNext);
        assert_eq!(sends(&drain(&mut s)), vec![ClientMessage::UndoNext]);
        s.handle(Input::Server(ServerMessage::Error {
            code: ErrorCode::UndoUnavailable,
            message: "they have moved on".into(),
        }));
        let outs = drain(&mut s);
        assert_eq!(
            outs,
            vec![Output::Notify(Notice::System(
                "Couldn't bring them back — they've moved on.".into()
            ))],
            "a plain line, no error, no StopPeer"
        );
        assert_eq!(
            s.current_match(),
            Some(&"m2".into()),
            "still in the new call"
        );
        // While searching, the search goes on.
        s.handle(Input::Next);
        s.handle(Input::UndoNext);
        s.handle(Input::Server(ServerMessage::Error {
            code: ErrorCode::UndoUnavailable,
            message: "gone".into(),
        }));
        assert!(matches!(s.phase(), Phase::Searching { .. }));
        // A later plain match is not taken for our undo.
        matched(&mut s, "m3", Role::Offerer);
        assert!(systems(&drain(&mut s))
            .contains(&"You're now chatting with a random stranger. Say hi!".to_string()));
    }

    #[test]
    fn block_names_the_current_or_last_stranger_once() {
        let mut s = welcomed();
        assert!(!s.status().can_block);
        s.handle(Input::Block);
        assert!(drain(&mut s).is_empty(), "nobody to block yet");
        in_call(&mut s, "m1");
        assert!(s.status().can_block);
        s.handle(Input::Block);
        let outs = drain(&mut s);
        assert_eq!(
            sends(&outs),
            vec![ClientMessage::Block {
                match_id: "m1".into()
            }]
        );
        assert_eq!(
            systems(&outs),
            vec!["You won't be matched with this person again.".to_string()]
        );
        assert!(!s.status().can_block);
        assert!(matches!(s.phase(), Phase::Live { .. }), "the call goes on");
        s.handle(Input::Block);
        assert!(drain(&mut s).is_empty(), "once");

        // After a call: the last stranger, also while already searching again.
        matched(&mut s, "m2", Role::Offerer);
        s.handle(Input::Server(ServerMessage::PartnerLeft {
            match_id: "m2".into(),
            reason: PartnerLeftReason::Left,
        }));
        assert!(matches!(s.phase(), Phase::Searching { .. }));
        assert!(s.status().can_block);
        drain(&mut s);
        s.handle(Input::Block);
        assert_eq!(
            sends(&drain(&mut s)),
            vec![ClientMessage::Block {
                match_id: "m2".into()
            }]
        );

        // Blocking the skipped stranger withdraws the undo offer.
        in_call(&mut s, "m3");
        s.handle(Input::Next);
        assert!(s.status().undo.is_some());
        s.handle(Input::Block);
        assert_eq!(s.status().undo, None);
    }

    #[test]
    fn mute_hides_the_strangers_chat_for_the_rest_of_the_call() {
        let mut s = welcomed();
        in_call(&mut s, "m1");
        s.handle(Input::MuteChat(true));
        let outs = drain(&mut s);
        assert!(s.status().chat_muted);
        assert_eq!(systems(&outs).len(), 1, "a system line says so: {outs:?}");
        assert!(sends(&outs).is_empty(), "muting is local");
        s.handle(Input::Server(ServerMessage::Chat {
            match_id: "m1".into(),
            text: "buy my stuff".into(),
        }));
        s.handle(Input::Server(ServerMessage::Typing {
            match_id: "m1".into(),
            active: true,
        }));
        assert!(drain(&mut s).is_empty(), "hidden");
        // Our own chat still goes out.
        s.handle(Input::SendChat("bye".into()));
        assert_eq!(sends(&drain(&mut s)).len(), 1);
        // Reset on a new match.
        s.handle(Input::Next);
        matched(&mut s, "m2", Role::Offerer);
        drain(&mut s);
        assert!(!s.status().chat_muted);
        s.handle(Input::Server(ServerMessage::Chat {
            match_id: "m2".into(),
            text: "hello".into(),
        }));
        assert!(drain(&mut s).contains(&Output::Notify(Notice::Chat {
            from_me: false,
            text: "hello".into()
        })));
        // Unmute within a call shows new lines again; muting outside a call does nothing.
        s.handle(Input::MuteChat(true));
        s.handle(Input::MuteChat(false));
        assert!(!s.status().chat_muted);
        s.handle(Input::Stop);
        s.handle(Input::MuteChat(true));
        assert!(!s.status().chat_muted);
    }

    fn first_frame(id: &str, path: CallPath, setup_ms: Option<u64>) -> Input {
        Input::FirstFrame {
            match_id: id.into(),
            path,
            setup_ms,
        }
    }

    #[test]
    fn call_report_once_per_current_match() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        drain(&mut s);
        matched(&mut s, "m1", Role::Answerer);
        s.handle(Input::PeerConnected("m1".into()));
        drain(&mut s);
        s.handle(first_frame("old", CallPath::Host, Some(5)));
        assert!(drain(&mut s).is_empty(), "not for another match");
        s.handle(first_frame("m1", CallPath::Relay, Some(840)));
        assert_eq!(
            sends(&drain(&mut s)),
            vec![ClientMessage::CallReport {
                match_id: "m1".into(),
                path: CallPath::Relay,
                setup_ms: Some(840),
            }]
        );
        s.handle(first_frame("m1", CallPath::Host, Some(900)));
        assert!(drain(&mut s).is_empty(), "never twice");

        // The next match reports again; a frame from the ended one does not.
        matched(&mut s, "m2", Role::Offerer);
        drain(&mut s);
        s.handle(first_frame("m1", CallPath::Host, Some(1)));
        assert!(drain(&mut s).is_empty(), "not for a stale match");
        s.handle(first_frame("m2", CallPath::Srflx, None));
        assert_eq!(
            sends(&drain(&mut s)),
            vec![ClientMessage::CallReport {
                match_id: "m2".into(),
                path: CallPath::Srflx,
                setup_ms: None,
            }]
        );
    }

    #[test]
    fn no_call_report_after_the_match_ended() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        drain(&mut s);
        matched(&mut s, "m1", Role::Offerer);
        s.handle(Input::Stop);
        drain(&mut s);
        s.handle(first_frame("m1", CallPath::Host, Some(100)));
        assert!(sends(&drain(&mut s)).is_empty());
    }

    fn failed_sends(m: &str) -> Vec<ClientMessage> {
        vec![
            ClientMessage::CallReport {
                match_id: m.into(),
                path: CallPath::Failed,
                setup_ms: None,
            },
            ClientMessage::Next {
                reason: Some(NextReason::ConnectionFailed),
            },
        ]
    }

    const GIVE_UP_LINE: &str = "Couldn't connect to this stranger — finding someone new.";

    #[test]
    fn the_answerer_shows_reconnecting_when_the_partner_restarts_ice() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        matched(&mut s, "m1", Role::Answerer);
        // The first offer sets the call up: nothing lost.
        s.handle(Input::Server(ServerMessage::Signal {
            match_id: "m1".into(),
            payload: serde_json::json!({"kind":"offer","sdp":"v=0"}),
        }));
        s.handle(Input::PeerConnected("m1".into()));
        drain(&mut s);
        assert!(!s.status().peer_lost);
        // A later offer in the live call is an ICE restart.
        s.handle(Input::Server(ServerMessage::Signal {
            match_id: "m1".into(),
            payload: serde_json::json!({"kind":"offer","sdp":"v=0"}),
        }));
        let outs = drain(&mut s);
        assert!(s.status().peer_lost);
        assert!(s.status().peer_timer.is_some(), "give-up timer armed");
        assert_eq!(s.status().ice_restart, 0, "only the offerer restarts");
        assert!(outs.contains(&Output::Notify(Notice::System(
            "Connection to the stranger lost — reconnecting…".into()
        ))));
        assert!(
            outs.iter().any(|o| matches!(o, Output::PeerSignal { .. })),
            "the offer still reaches the peer: {outs:?}"
        );
        s.handle(Input::PeerConnected("m1".into()));
        drain(&mut s);
        assert!(!s.status().peer_lost, "back when connected");
    }

    #[test]
    fn a_lost_path_shows_reconnecting_and_comes_back_in_the_same_call() {
        let mut s = welcomed();
        in_call(&mut s, "m1");
        assert_eq!(s.status().peer_timer, None, "connected: no timer");
        s.handle(Input::PeerDisconnected("m1".into()));
        let outs = drain(&mut s);
        assert!(s.status().peer_lost);
        let timer = s.status().peer_timer.expect("give-up timer armed");
        assert_eq!(s.status().ice_restart, 1, "the offerer restarts ICE");
        assert!(outs.contains(&Output::Notify(Notice::System(
            "Connection to the stranger lost — reconnecting…".into()
        ))));
        assert!(sends(&outs).is_empty(), "{outs:?}");
        // A second report changes nothing (no second restart).
        s.handle(Input::PeerDisconnected("m1".into()));
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.status().ice_restart, 1);
        // Chat keeps working meanwhile.
        s.handle(Input::SendChat("still there?".into()));
        assert!(matches!(
            &sends(&drain(&mut s))[..],
            [ClientMessage::Chat { .. }]
        ));
        s.handle(Input::PeerConnected("m1".into()));
        let outs = drain(&mut s);
        assert!(!s.status().peer_lost);
        assert_eq!(s.status().peer_timer, None);
        assert!(!outs.contains(&Output::StopPeer));
        assert!(sends(&outs).is_empty());
        assert_eq!(
            s.phase(),
            &Phase::Live {
                match_id: "m1".into()
            }
        );
        // The old timer firing late does nothing.
        s.handle(Input::PeerTimeout(timer));
        assert!(drain(&mut s).is_empty());
        assert_eq!(
            s.phase(),
            &Phase::Live {
                match_id: "m1".into()
            }
        );
    }

    #[test]
    fn the_answerer_waits_for_the_offerers_restart() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        matched(&mut s, "m1", Role::Answerer);
        s.handle(Input::PeerConnected("m1".into()));
        drain(&mut s);
        s.handle(Input::PeerDisconnected("m1".into()));
        drain(&mut s);
        assert!(s.status().peer_lost);
        assert_eq!(s.status().ice_restart, 0, "only the offerer restarts ICE");
    }

    #[test]
    fn a_path_that_does_not_come_back_in_time_ends_the_match_as_failed() {
        let mut s = welcomed();
        in_call(&mut s, "m1");
        s.handle(Input::PeerDisconnected("m1".into()));
        let timer = s.status().peer_timer.expect("armed");
        drain(&mut s);
        s.handle(Input::PeerTimeout(timer.wrapping_add(7)));
        assert!(
            drain(&mut s).is_empty(),
            "another timer's number is ignored"
        );
        s.handle(Input::PeerTimeout(timer));
        let outs = drain(&mut s);
        assert!(outs.contains(&Output::StopPeer));
        assert!(outs.contains(&Output::Notify(Notice::System(GIVE_UP_LINE.into()))));
        assert_eq!(sends(&outs), failed_sends("m1"));
        assert_eq!(s.phase(), &Phase::Searching { waiting: 0 });
        assert!(!s.status().peer_lost);
        assert_eq!(s.status().peer_timer, None);
        assert_eq!(s.status().undo, None, "a failed call is not undone");
        // The partner's own give-up crossing ours is ignored.
        s.handle(Input::Server(ServerMessage::PartnerLeft {
            match_id: "m1".into(),
            reason: PartnerLeftReason::Disconnected,
        }));
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn a_failed_peer_connection_ends_the_match_as_failed() {
        let mut s = welcomed();
        in_call(&mut s, "m1");
        s.handle(Input::PeerFailed("m1".into()));
        let outs = drain(&mut s);
        assert!(outs.contains(&Output::StopPeer));
        assert!(outs.contains(&Output::Notify(Notice::System(GIVE_UP_LINE.into()))));
        assert_eq!(sends(&outs), failed_sends("m1"));
        assert_eq!(s.phase(), &Phase::Searching { waiting: 0 });
    }

    #[test]
    fn a_call_that_never_connects_gives_up_when_its_timer_runs_out() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        matched(&mut s, "m1", Role::Answerer);
        let timer = s.status().peer_timer.expect("armed at matched");
        drain(&mut s);
        // Disconnected while still connecting keeps the same timer.
        s.handle(Input::PeerDisconnected("m1".into()));
        assert_eq!(s.status().peer_timer, Some(timer));
        assert!(!s.status().peer_lost);
        drain(&mut s);
        s.handle(Input::PeerTimeout(timer));
        let outs = drain(&mut s);
        assert_eq!(sends(&outs), failed_sends("m1"));
        assert_eq!(s.phase(), &Phase::Searching { waiting: 0 });
        // The next match arms a fresh timer.
        matched(&mut s, "m2", Role::Offerer);
        let next = s.status().peer_timer.expect("armed again");
        assert_ne!(next, timer);
        s.handle(Input::PeerTimeout(timer));
        assert!(matches!(s.phase(), Phase::Connecting { .. }));
    }

    #[test]
    fn a_call_that_already_reported_its_path_does_not_report_failed() {
        let mut s = welcomed();
        in_call(&mut s, "m1");
        s.handle(first_frame("m1", CallPath::Host, Some(120)));
        drain(&mut s);
        s.handle(Input::PeerFailed("m1".into()));
        assert_eq!(
            sends(&drain(&mut s)),
            vec![ClientMessage::Next {
                reason: Some(NextReason::ConnectionFailed)
            }]
        );
    }

    #[test]
    fn giving_up_while_the_server_is_away_tells_it_on_resume() {
        let mut s = live_with_token();
        s.handle(Input::ServerLost);
        s.handle(Input::PeerDisconnected("m1".into()));
        let timer = s.status().peer_timer.expect("armed");
        s.handle(Input::PeerTimeout(timer));
        let outs = drain(&mut s);
        assert!(outs.contains(&Output::StopPeer));
        assert!(sends(&outs).is_empty(), "{outs:?}");
        s.handle(Input::ServerConnected);
        s.handle(welcome("t2", true));
        let outs = drain(&mut s);
        assert_eq!(
            sends(&outs)[1..],
            [ClientMessage::Next {
                reason: Some(NextReason::ConnectionFailed)
            }]
        );
    }

    fn matched_with(s: &mut Session, id: &str, role: Role, urls: &[&str]) {
        s.handle(Input::Server(ServerMessage::Matched {
            match_id: id.into(),
            role,
            common_interests: vec![],
            ice_servers: vec![IceServer {
                urls: urls.iter().map(|u| (*u).to_owned()).collect(),
                username: Some("u".into()),
                credential: Some("c".into()),
            }],
            resumed: false,
        }));
    }

    const TURN: &[&str] = &["stun:10.0.0.1:3478", "turn:10.0.0.1:3478?transport=udp"];

    fn offer_from_partner(s: &mut Session, id: &str) {
        s.handle(Input::Server(ServerMessage::Signal {
            match_id: id.into(),
            payload: serde_json::json!({"kind":"offer","sdp":"v=0"}),
        }));
    }

    #[test]
    fn a_lost_path_retries_relay_only_once_before_giving_up() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        matched_with(&mut s, "m1", Role::Offerer, TURN);
        s.handle(Input::PeerConnected("m1".into()));
        drain(&mut s);
        s.handle(Input::PeerDisconnected("m1".into()));
        drain(&mut s);
        assert_eq!(s.status().ice_restart, 1, "the usual restart first");
        assert!(!s.status().relay_retry);
        let first = s.status().peer_timer.expect("armed");
        // The restart did not bring the path back in time: relay-only, once.
        s.handle(Input::PeerTimeout(first));
        let outs = drain(&mut s);
        assert!(s.status().relay_retry);
        assert_eq!(s.status().ice_restart, 2, "the offerer restarts ICE again");
        let retry = s.status().peer_timer.expect("the retry has its own window");
        assert_ne!(retry, first);
        assert!(s.status().peer_lost, "still reconnecting");
        assert!(outs.contains(&Output::Notify(Notice::System(RELAY_RETRY_LINE.into()))));
        assert!(sends(&outs).is_empty(), "nobody gives up yet: {outs:?}");
        assert!(!outs.contains(&Output::StopPeer));
        // ICE reporting failed meanwhile (the previous attempt) does not end the retry.
        s.handle(Input::PeerFailed("m1".into()));
        assert!(drain(&mut s).is_empty());
        assert!(matches!(s.phase(), Phase::Live { .. }));
        // The retry's window runs out: now the match ends as failed.
        s.handle(Input::PeerTimeout(retry));
        let outs = drain(&mut s);
        assert!(outs.contains(&Output::StopPeer));
        assert!(outs.contains(&Output::Notify(Notice::System(GIVE_UP_LINE.into()))));
        assert_eq!(sends(&outs), failed_sends("m1"));
        assert_eq!(s.status().ice_restart, 2);
        assert!(!s.status().relay_retry, "over with the match");
    }

    #[test]
    fn a_relay_retry_that_connects_keeps_the_call_and_is_not_repeated() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        matched_with(&mut s, "m1", Role::Offerer, TURN);
        let timer = s.status().peer_timer.expect("armed at matched");
        drain(&mut s);
        // Never connected: ICE failed before the timer ran out.
        s.handle(Input::PeerFailed("m1".into()));
        drain(&mut s);
        assert!(s.status().relay_retry);
        assert_eq!(s.status().ice_restart, 1);
        // The first timer is stale now.
        s.handle(Input::PeerTimeout(timer));
        assert!(drain(&mut s).is_empty());
        s.handle(Input::PeerConnected("m1".into()));
        let outs = drain(&mut s);
        assert!(sends(&outs).is_empty());
        assert_eq!(
            s.phase(),
            &Phase::Live {
                match_id: "m1".into()
            }
        );
        assert_eq!(s.status().peer_timer, None);
        assert!(s.status().relay_retry, "the call stays relay-only");
        // A later loss restarts as usual, but a match retries relay-only once.
        s.handle(Input::PeerDisconnected("m1".into()));
        let timer = s.status().peer_timer.expect("armed");
        assert_eq!(s.status().ice_restart, 2);
        s.handle(Input::PeerTimeout(timer));
        assert_eq!(sends(&drain(&mut s)), failed_sends("m1"));
        assert_eq!(s.status().ice_restart, 2);
        // The next match may retry again.
        matched_with(&mut s, "m2", Role::Offerer, TURN);
        assert!(!s.status().relay_retry);
        s.handle(Input::PeerFailed("m2".into()));
        assert!(s.status().relay_retry);
    }

    #[test]
    fn no_relay_retry_without_a_usable_turn_server_or_with_relay_policy() {
        for urls in [
            &["stun:10.0.0.1:3478"][..],
            &["turns:10.0.0.1:5349", "turn:10.0.0.1:3478?transport=tcp"][..],
        ] {
            let mut s = welcomed();
            s.handle(Input::Start { interests: vec![] });
            matched_with(&mut s, "m1", Role::Offerer, urls);
            drain(&mut s);
            s.handle(Input::PeerFailed("m1".into()));
            assert_eq!(sends(&drain(&mut s)), failed_sends("m1"), "{urls:?}");
            assert!(!s.status().relay_retry);
        }
        // `--ice-policy relay`: the call was relay-only already.
        let mut s = welcomed();
        s.set_relay_retry(false);
        s.handle(Input::Start { interests: vec![] });
        matched_with(&mut s, "m1", Role::Offerer, TURN);
        let timer = s.status().peer_timer.expect("armed");
        drain(&mut s);
        s.handle(Input::PeerTimeout(timer));
        assert_eq!(sends(&drain(&mut s)), failed_sends("m1"));
        assert_eq!(s.status().ice_restart, 0);
    }

    #[test]
    fn the_answerer_follows_the_offerers_relay_retry() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        matched_with(&mut s, "m1", Role::Answerer, TURN);
        let timer = s.status().peer_timer.expect("armed at matched");
        offer_from_partner(&mut s, "m1");
        drain(&mut s);
        assert!(!s.status().relay_retry, "the first offer sets the call up");
        // The call never connected and the offerer's timer ran out first: its second
        // offer is the relay-only retry. We switch before the peer applies it.
        offer_from_partner(&mut s, "m1");
        let outs = drain(&mut s);
        assert!(s.status().relay_retry);
        assert_eq!(s.status().ice_restart, 0, "only the offerer restarts");
        let retry = s.status().peer_timer.expect("a fresh window");
        assert_ne!(retry, timer);
        assert!(outs.contains(&Output::Notify(Notice::System(RELAY_RETRY_LINE.into()))));
        assert!(
            outs.iter().any(|o| matches!(o, Output::PeerSignal { .. })),
            "the offer reaches the peer: {outs:?}"
        );
        assert!(sends(&outs).is_empty());
        // Our own first timer firing now changes nothing; the retry's ends the match.
        s.handle(Input::PeerTimeout(timer));
        assert!(drain(&mut s).is_empty());
        s.handle(Input::PeerTimeout(retry));
        assert_eq!(sends(&drain(&mut s)), failed_sends("m1"));
    }

    #[test]
    fn an_answerer_whose_timer_runs_out_first_waits_for_the_retry() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        matched_with(&mut s, "m1", Role::Answerer, TURN);
        offer_from_partner(&mut s, "m1");
        s.handle(Input::PeerConnected("m1".into()));
        drain(&mut s);
        // The path is lost; the offerer's usual restart arrives.
        offer_from_partner(&mut s, "m1");
        drain(&mut s);
        assert!(s.status().peer_lost);
        assert!(
            !s.status().relay_retry,
            "one offer in this outage: the usual restart"
        );
        let timer = s.status().peer_timer.expect("armed");
        s.handle(Input::PeerTimeout(timer));
        let outs = drain(&mut s);
        assert!(sends(&outs).is_empty(), "waits for the offerer: {outs:?}");
        assert!(
            s.status().relay_retry,
            "relay-only before the retry's offer"
        );
        let retry = s.status().peer_timer.expect("armed again");
        // The retry's offer does not extend the window again.
        offer_from_partner(&mut s, "m1");
        drain(&mut s);
        assert_eq!(s.status().peer_timer, Some(retry));
        s.handle(Input::PeerConnected("m1".into()));
        drain(&mut s);
        assert!(!s.status().peer_lost);
        assert!(matches!(s.phase(), Phase::Live { .. }));
    }

    fn unavailable() -> Input {
        Input::Server(ServerMessage::Error {
            code: ErrorCode::Unavailable,
            message: "the service is busy".into(),
        })
    }

    /// The armed join retry: its number and how many `unavailable`s came in a row.
    fn armed(s: &Session) -> (u64, u32) {
        let r = s.status().join_retry.expect("a join retry is armed");
        (r.generation, r.attempt)
    }

    fn busy_lines(outs: &[Output]) -> usize {
        outs.iter()
            .filter(|o| matches!(o, Output::Notify(Notice::System(t)) if t == SERVICE_BUSY_LINE))
            .count()
    }

    #[test]
    fn join_retry_delay_doubles_caps_and_jitters() {
        let mid: Vec<u64> = (1..=7)
            .map(|a| join_retry_delay(a, 0.5).as_millis() as u64)
            .collect();
        assert_eq!(mid, [1000, 2000, 4000, 8000, 15000, 15000, 15000]);
        assert_eq!(join_retry_delay(u32::MAX, 0.5), JOIN_RETRY_MAX);
        assert_eq!(join_retry_delay(1, 0.0), Duration::from_millis(750));
        assert_eq!(join_retry_delay(1, 1.0), Duration::from_millis(1250));
        assert_eq!(join_retry_delay(5, 0.0), Duration::from_millis(11250));
    }

    #[test]
    fn unavailable_after_join_says_service_busy_and_joins_again_with_backoff() {
        let mut s = welcomed();
        s.handle(Input::Start {
            interests: vec!["music".into()],
        });
        drain(&mut s);
        s.handle(unavailable());
        let outs = drain(&mut s);
        assert!(sends(&outs).is_empty(), "nothing at once: {outs:?}");
        assert_eq!(busy_lines(&outs), 1, "{outs:?}");
        assert!(
            !outs
                .iter()
                .any(|o| matches!(o, Output::Notify(Notice::Error { .. }))),
            "not shown as an error: {outs:?}"
        );
        assert_eq!(s.phase(), &Phase::ServiceBusy { retries: 0 });
        let (first, attempt) = armed(&s);
        assert_eq!(attempt, 1);
        // A stale timer does nothing.
        s.handle(Input::JoinRetry(first + 1));
        assert!(drain(&mut s).is_empty());
        let mut generation = first;
        for retry in 1..=3u32 {
            s.handle(Input::JoinRetry(generation));
            let outs = drain(&mut s);
            assert_eq!(
                sends(&outs),
                vec![ClientMessage::Join {
                    interests: vec!["music".into()]
                }],
                "the same interests again"
            );
            assert_eq!(s.phase(), &Phase::ServiceBusy { retries: retry });
            assert_eq!(s.status().join_retry, None, "nothing armed while it is out");
            // The same timer firing twice sends one join.
            s.handle(Input::JoinRetry(generation));
            assert!(drain(&mut s).is_empty());
            s.handle(unavailable());
            let outs = drain(&mut s);
            assert_eq!(busy_lines(&outs), 0, "said once per spell: {outs:?}");
            let (g, attempt) = armed(&s);
            assert!(g > generation, "a new number for a new wait");
            assert_eq!(attempt, retry + 1, "the wait grows");
            generation = g;
        }
        // Served again: searching, nothing armed, and the backoff starts over.
        s.handle(Input::JoinRetry(generation));
        drain(&mut s);
        s.handle(Input::Server(ServerMessage::Queued { waiting: 2 }));
        assert_eq!(s.phase(), &Phase::Searching { waiting: 2 });
        assert_eq!(s.status().join_retry, None);
        s.handle(Input::Next);
        drain(&mut s);
        s.handle(unavailable());
        assert_eq!(busy_lines(&drain(&mut s)), 1, "a new spell says it again");
        assert_eq!(armed(&s).1, 1);
        s.handle(Input::JoinRetry(armed(&s).0));
        drain(&mut s);
        matched(&mut s, "m1", Role::Offerer);
        drain(&mut s);
        assert!(matches!(s.phase(), Phase::Connecting { .. }));
        assert_eq!(s.status().join_retry, None);
    }

    #[test]
    fn stop_cancels_the_join_retry() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        drain(&mut s);
        s.handle(unavailable());
        drain(&mut s);
        let (generation, _) = armed(&s);
        s.handle(Input::Stop);
        let outs = drain(&mut s);
        assert_eq!(
            sends(&outs),
            vec![ClientMessage::Leave],
            "a re-sent join may be on its way: leave"
        );
        assert_eq!(s.phase(), &Phase::Idle);
        assert_eq!(s.status().join_retry, None);
        s.handle(Input::JoinRetry(generation));
        assert!(
            drain(&mut s).is_empty(),
            "the cancelled retry sends nothing"
        );
        // Stop while a re-sent join is out: its late `unavailable` is not retried.
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        s.handle(unavailable());
        s.handle(Input::JoinRetry(armed(&s).0));
        s.handle(Input::Stop);
        drain(&mut s);
        s.handle(unavailable());
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.phase(), &Phase::Idle);
        assert_eq!(s.status().join_retry, None);
    }

    #[test]
    fn next_replaces_the_join_retry_and_the_backoff_keeps_growing() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        s.handle(unavailable());
        drain(&mut s);
        let (generation, _) = armed(&s);
        s.handle(Input::Next);
        assert_eq!(
            sends(&drain(&mut s)),
            vec![ClientMessage::Next { reason: None }]
        );
        assert_eq!(s.status().join_retry, None, "Next is the new attempt");
        assert_eq!(s.phase(), &Phase::Searching { waiting: 0 });
        s.handle(Input::JoinRetry(generation));
        assert!(sends(&drain(&mut s)).is_empty(), "the old retry is gone");
        s.handle(unavailable());
        drain(&mut s);
        assert_eq!(armed(&s).1, 2, "still unavailable: the next wait is longer");
    }

    #[test]
    fn a_next_out_of_a_call_answered_unavailable_joins_again() {
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        matched(&mut s, "m1", Role::Answerer);
        s.handle(Input::PeerConnected("m1".into()));
        drain(&mut s);
        s.handle(Input::Next);
        drain(&mut s);
        // The server ended the match but could not queue us: we are idle there.
        s.handle(unavailable());
        drain(&mut s);
        assert_eq!(s.phase(), &Phase::ServiceBusy { retries: 0 });
        assert!(s.status().undo.is_some(), "the undo offer stands");
        s.handle(Input::JoinRetry(armed(&s).0));
        assert_eq!(
            sends(&drain(&mut s)),
            vec![ClientMessage::Join { interests: vec![] }],
            "join, not a second next"
        );
    }

    #[test]
    fn unavailable_for_a_relay_is_not_a_busy_queue() {
        // In a call: a chat to a partner on another node was not delivered.
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        matched(&mut s, "m1", Role::Offerer);
        s.handle(Input::PeerConnected("m1".into()));
        drain(&mut s);
        s.handle(unavailable());
        let outs = drain(&mut s);
        assert!(
            outs.iter().any(|o| matches!(
                o,
                Output::Notify(Notice::Error {
                    code: ErrorCode::Unavailable,
                    ..
                })
            )),
            "said as an error: {outs:?}"
        );
        assert!(matches!(s.phase(), Phase::Live { .. }));
        assert_eq!(s.status().join_retry, None);
        // Already queued: a late answer to something else changes nothing.
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        s.handle(Input::Server(ServerMessage::Queued { waiting: 1 }));
        drain(&mut s);
        s.handle(unavailable());
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.phase(), &Phase::Searching { waiting: 1 });
        assert_eq!(s.status().join_retry, None);
        // Two answers for one spell (a relay that crossed our Next, then the Next):
        // one retry, one step of backoff.
        let mut s = welcomed();
        s.handle(Input::Start { interests: vec![] });
        matched(&mut s, "m1", Role::Offerer);
        s.handle(Input::PeerConnected("m1".into()));
        s.handle(Input::SendChat("hi".into()));
        s.handle(Input::Next);
        drain(&mut s);
        s.handle(unavailable());
        s.handle(unavailable());
        drain(&mut s);
        assert_eq!(armed(&s).1, 1);
    }

    #[test]
    fn a_new_connection_resets_the_join_retry() {
        let mut s = Session::new("test/1", true);
        s.handle(Input::Start { interests: vec![] });
        s.handle(Input::ServerConnected);
        s.handle(welcome("t1", false));
        s.handle(unavailable());
        s.handle(Input::JoinRetry(armed(&s).0));
        s.handle(unavailable());
        drain(&mut s);
        let (generation, attempt) = armed(&s);
        assert_eq!(attempt, 2);
        s.handle(Input::ServerLost);
        assert_eq!(s.status().join_retry, None);
        assert_eq!(s.phase(), &Phase::Reconnecting);
        s.handle(Input::JoinRetry(generation));
        assert!(drain(&mut s).is_empty(), "no join without a connection");
        // Resumed: the server held us idle, so the machine joins at once.
        s.handle(Input::ServerConnected);
        s.handle(welcome("t2", true));
        let outs = drain(&mut s);
        assert!(
            sends(&outs).contains(&ClientMessage::Join { interests: vec![] }),
            "{outs:?}"
        );
        assert_eq!(s.phase(), &Phase::Searching { waiting: 0 });
        s.handle(unavailable());
        drain(&mut s);
        assert_eq!(armed(&s).1, 1, "the backoff starts over");
    }
}
