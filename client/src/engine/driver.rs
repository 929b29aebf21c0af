//! The task that owns the signaling connection and the current call and drives the
//! session machine with what they report. It is the only place where protocol, peer
//! connection and media meet; every decision is the machine's.

use super::bitrate::BitrateController;
use super::call::{Call, CallContext};
use super::capture::CaptureHub;
use super::stats::{CallStats, Counters, StatsSnapshot};
use super::{Command, EngineConfig, EngineEvent, EngineState};
use crate::media::frame::RgbaFrame;
use crate::media::mailbox::FrameMailbox;
use crate::media::playback::AudioSink;
use crate::net::peer::{parse_signal, IcePolicy, PeerEvent, PeerSettings, PeerState};
use crate::net::signaling::{self, SignalingEvent};
use crate::session::machine::{
    join_retry_delay, Input, Notice, Output, Phase, Session, Status, PEER_GIVE_UP, UNDO_WINDOW,
};
use peer_stream_shared::{CallPath, ClientMessage, MatchId, Role, SignalPayload};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub struct Driver {
    pub config: EngineConfig,
    pub commands: mpsc::Receiver<Command>,
    pub events: mpsc::Sender<EngineEvent>,
    pub state: Arc<Mutex<EngineState>>,
    pub counters: Arc<Counters>,
    pub remote_video: Arc<FrameMailbox<RgbaFrame>>,
    pub sink: Arc<Mutex<Box<dyn AudioSink>>>,
    pub hub: CaptureHub,
    pub repaint: Arc<dyn Fn() + Send + Sync>,
    pub cancel: CancellationToken,
}

/// Resolves at the end of the open undo window, give-up timer or join retry wait (never
/// when none is open) with its number.
async fn undo_expiry(undo: Option<(u64, tokio::time::Instant)>) -> u64 {
    match undo {
        Some((generation, at)) => {
            tokio::time::sleep_until(at).await;
            generation
        }
        None => std::future::pending().await,
    }
}

async fn next_peer_event(call: &mut Option<Call>) -> Option<PeerEvent> {
    match call {
        Some(c) => c.events.recv().await,
        None => std::future::pending().await,
    }
}

impl Driver {
    pub async fn run(mut self) {
        let (out_tx, out_rx) = mpsc::channel::<ClientMessage>(256);
        let (sig_tx, mut sig_rx) = mpsc::channel::<SignalingEvent>(1024);
        let sig_cancel = self.cancel.child_token();
        tokio::spawn(signaling::run(
            self.config.server_url.clone(),
            out_rx,
            sig_tx,
            sig_cancel.clone(),
        ));
        let mut session = Session::new(self.config.client_name.clone(), self.config.auto_requeue);
        // A relay-only call has nothing to fall back from.
        session.set_relay_retry(self.config.ice_policy == IcePolicy::All);
        let mut call: Option<Call> = None;
        let mut stats_tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_snapshot: Option<StatsSnapshot> = None;
        let mut last_phase = Phase::Offline;
        let mut bitrate = BitrateController::new(self.config.video_settings.bitrate_bps);
        let mut bitrate_call: Option<String> = None;
        let mut last_status = Status::default();
        // The call whose first decoded frame was handed to the machine (call_report).
        let mut first_frame_fed: Option<String> = None;
        // The open undo window: its number and when it closes.
        let mut undo: Option<(u64, tokio::time::Instant)> = None;
        // The running give-up timer of the call: its number and when it runs out.
        let mut peer_timer: Option<(u64, tokio::time::Instant)> = None;
        // The re-sent `join` after `unavailable`: its number and when it is due.
        let mut join_retry: Option<(u64, tokio::time::Instant)> = None;

        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                generation = undo_expiry(undo) => {
                    undo = None;
                    session.handle(Input::UndoExpired(generation));
                }
                generation = undo_expiry(peer_timer) => {
                    peer_timer = None;
                    session.handle(Input::PeerTimeout(generation));
                }
                generation = undo_expiry(join_retry) => {
                    join_retry = None;
                    session.handle(Input::JoinRetry(generation));
                }
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { break };
                    if let Some(input) = self.on_command(cmd, &mut session) {
                        session.handle(input);
                    }
                }
                ev = sig_rx.recv() => match ev {
                    Some(SignalingEvent::Connected) => {
                        self.update(|s| s.server_error = None);
                        session.handle(Input::ServerConnected);
                    }
                    Some(SignalingEvent::Message(msg)) => session.handle(Input::Server(msg)),
                    Some(SignalingEvent::Lost { error, retry_in }) => {
                        self.update(|s| s.server_error = Some(error.clone()));
                        self.emit(EngineEvent::ServerUnreachable { error, retry_in });
                        session.handle(Input::ServerLost);
                    }
                    None => break,
                },
                pev = next_peer_event(&mut call) => {
                    if let Some(c) = call.as_mut() {
                        let id = MatchId(c.match_id.clone());
                        match pev {
                            Some(PeerEvent::LocalCandidate(payload)) => {
                                send_signal(&out_tx, &id, &payload).await;
                            }
                            Some(PeerEvent::State(PeerState::Connected)) => {
                                c.connected();
                                // After a reconnection: a keyframe each way at once.
                                c.request_keyframe_from_us();
                                c.peer.request_keyframe().await;
                                session.handle(Input::PeerConnected(id));
                            }
                            Some(PeerEvent::State(PeerState::Disconnected)) => {
                                session.handle(Input::PeerDisconnected(id));
                            }
                            Some(PeerEvent::State(PeerState::Failed | PeerState::Closed)) | None => {
                                session.handle(Input::PeerFailed(id));
                            }
                            Some(PeerEvent::State(_)) => {}
                            Some(PeerEvent::KeyframeRequested) => c.request_keyframe_from_us(),
                        }
                    }
                }
                _ = stats_tick.tick() => {
                    if let Some(c) = &call {
                        if bitrate_call.as_deref() != Some(c.match_id.as_str()) {
                            // A new call starts from the full target again.
                            bitrate = BitrateController::new(self.config.video_settings.bitrate_bps);
                            bitrate_call = Some(c.match_id.clone());
                        }
                        let stats = c.peer.stats().await;
                        let by_loss = stats.video_fraction_lost.and_then(|l| bitrate.on_report(l));
                        let by_path = stats.send_estimate_bps.and_then(|b| bitrate.on_estimate(b));
                        if let Some(bps) = by_path.or(by_loss) {
                            c.set_bitrate(bps);
                        }
                        if let Some(loss) = stats.audio_fraction_lost {
                            c.set_audio_loss(loss);
                        }
                        self.counters.set_peer_stats(stats);
                        if first_frame_fed.as_deref() != Some(c.match_id.as_str()) {
                            if let Some(input) = self.first_frame(&c.match_id) {
                                first_frame_fed = Some(c.match_id.clone());
                                session.handle(input);
                            }
                        }
                    }
                    let snap = self.counters.snapshot();
                    if let Some(old) = &last_snapshot {
                        let stats = CallStats::between(old, &snap);
                        self.update(|s| s.stats = stats.clone());
                        self.emit(EngineEvent::Stats(stats));
                    }
                    last_snapshot = Some(snap);
                }
            }

            // The relay-only retry: switch the peer connection before it applies the
            // partner's next offer (an output below) or makes our restart (the status
            // change further down). Idempotent, so checking every turn is cheap.
            if session.status().relay_retry {
                if let Some(c) = &call {
                    if let Err(e) = c.peer.use_relay_only().await {
                        tracing::warn!("relay-only retry for {}: {e:#}", c.match_id);
                    }
                }
            }
            while let Some(output) = session.poll_output() {
                self.execute(output, &mut call, &out_tx).await;
            }
            if *session.phase() != last_phase {
                last_phase = session.phase().clone();
                tracing::info!(phase = ?last_phase, "session");
                self.update(|s| s.phase = last_phase.clone());
                self.emit(EngineEvent::Phase(last_phase.clone()));
            }
            if *session.status() != last_status {
                let status = session.status().clone();
                if status.undo != last_status.undo {
                    let now = tokio::time::Instant::now();
                    undo = status.undo.map(|g| (g, now + UNDO_WINDOW));
                }
                if status.ice_restart != last_status.ice_restart {
                    if let Some(c) = &call {
                        self.restart_ice(c, &out_tx).await;
                    }
                }
                if status.peer_timer != last_status.peer_timer {
                    let now = tokio::time::Instant::now();
                    peer_timer = status.peer_timer.map(|g| (g, now + PEER_GIVE_UP));
                }
                if status.join_retry != last_status.join_retry {
                    let now = tokio::time::Instant::now();
                    join_retry = status.join_retry.map(|r| {
                        let wait = join_retry_delay(r.attempt, rand::random::<f64>());
                        tracing::info!(attempt = r.attempt, ?wait, "service busy: join again");
                        (r.generation, now + wait)
                    });
                }
                let undo_until = undo.map(|(_, at)| at.into_std());
                self.update(|s| {
                    s.online = status.online;
                    s.waiting = status.waiting;
                    s.undo_until = undo_until;
                    s.chat_muted = status.chat_muted;
                    s.resumed = status.resumed;
                    s.can_block = status.can_block;
                    s.peer_lost = status.peer_lost;
                });
                last_status = status;
            }
        }

        if let Some(c) = call.take() {
            c.close().await;
        }
        sig_cancel.cancel();
        self.hub.stop();
    }

    /// `Input::FirstFrame` once the call's first remote frame was decoded and its
    /// selected candidate type is known (a type outside the four is never reported).
    fn first_frame(&self, match_id: &str) -> Option<Input> {
        let rec = self
            .counters
            .matches()
            .into_iter()
            .rev()
            .find(|m| m.match_id == match_id)?;
        let setup_ms = rec.setup_ms?;
        let path = match rec.candidate_type.as_deref()? {
            "host" => CallPath::Host,
            "srflx" => CallPath::Srflx,
            "prflx" => CallPath::Prflx,
            "relay" => CallPath::Relay,
            _ => return None,
        };
        Some(Input::FirstFrame {
            match_id: MatchId(match_id.to_owned()),
            path,
            setup_ms: Some(setup_ms.round().clamp(0.0, 600_000.0) as u64),
        })
    }

    /// Restarts ICE on the call (we are its offerer) and sends the new offer.
    async fn restart_ice(&self, c: &Call, out_tx: &mpsc::Sender<ClientMessage>) {
        let match_id = MatchId(c.match_id.clone());
        match c.peer.restart_ice().await {
            Ok(sdp) => {
                self.counters.ice_restarted(&c.match_id);
                tracing::info!(%match_id, relay_only = c.peer.is_relay_only(), "ICE restart");
                send_signal(out_tx, &match_id, &SignalPayload::Offer { sdp }).await;
            }
            Err(e) => tracing::warn!("ICE restart for {match_id} failed: {e:#}"),
        }
    }

    fn on_command(&mut self, cmd: Command, session: &mut Session) -> Option<Input> {
        Some(match cmd {
            Command::Start { interests } => Input::Start { interests },
            Command::Next => Input::Next,
            Command::Stop => Input::Stop,
            Command::SendChat(t) => Input::SendChat(t),
            Command::Typing(on) => Input::Typing(on),
            Command::Report(r) => Input::Report(r),
            Command::UndoNext => Input::UndoNext,
            Command::Block => Input::Block,
            Command::MuteChat(on) => Input::MuteChat(on),
            Command::SetMicMuted(on) => {
                self.hub.controls.mic_muted.store(on, Relaxed);
                self.update(|s| s.mic_muted = on);
                return None;
            }
            Command::SetCameraOff(on) => {
                self.hub.controls.camera_off.store(on, Relaxed);
                self.update(|s| s.camera_off = on);
                return None;
            }
            Command::SetAutoRequeue(on) => {
                session.set_auto_requeue(on);
                return None;
            }
            Command::SetVolume(gain) => {
                self.sink
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .set_volume(gain);
                return None;
            }
        })
    }

    async fn execute(
        &mut self,
        output: Output,
        call: &mut Option<Call>,
        out_tx: &mpsc::Sender<ClientMessage>,
    ) {
        match output {
            Output::Send(msg) => {
                if let ClientMessage::Chat { .. } = &msg {
                    self.counters.chat_sent.fetch_add(1, Relaxed);
                }
                let _ = out_tx.send(msg).await;
            }
            Output::StartPeer {
                match_id,
                role,
                ice_servers,
            } => {
                if let Some(old) = call.take() {
                    old.close().await;
                }
                // A frame of the previous partner may still sit in the mailbox: drop it
                // so the new call never shows it.
                self.remote_video.clear();
                let settings = PeerSettings {
                    ice_servers,
                    udp_addrs: self.config.udp_addrs.clone(),
                    ice_policy: self.config.ice_policy,
                    video_codecs: self.config.video_codecs.clone(),
                };
                let ctx = CallContext {
                    counters: Arc::clone(&self.counters),
                    remote_video: Arc::clone(&self.remote_video),
                    sink: Arc::clone(&self.sink),
                    video: self.config.video_settings.clone(),
                    repaint: Arc::clone(&self.repaint),
                    video_frames: self.hub.video.clone(),
                    audio_frames: self.hub.audio.clone(),
                };
                match Call::start(match_id.0.clone(), &settings, ctx).await {
                    Ok(c) => {
                        c.set_bitrate(self.config.video_settings.bitrate_bps);
                        if role == Role::Offerer {
                            match c.peer.create_offer().await {
                                Ok(sdp) => {
                                    send_signal(out_tx, &match_id, &SignalPayload::Offer { sdp })
                                        .await
                                }
                                Err(e) => tracing::error!("cannot create an offer: {e:#}"),
                            }
                        }
                        *call = Some(c);
                    }
                    Err(e) => {
                        tracing::error!("cannot start the call: {e:#}");
                        self.emit(EngineEvent::Notice(Notice::System(format!(
                            "Could not set up the call: {e}"
                        ))));
                    }
                }
            }
            Output::PeerSignal { match_id, payload } => {
                let Some(c) = call.as_ref().filter(|c| c.match_id == match_id.0) else {
                    return;
                };
                let signal = match parse_signal(payload) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("{e:#}");
                        return;
                    }
                };
                let result = match signal {
                    SignalPayload::Offer { sdp } => match c.peer.accept_offer(sdp).await {
                        Ok(answer) => {
                            send_signal(out_tx, &match_id, &SignalPayload::Answer { sdp: answer })
                                .await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    SignalPayload::Answer { sdp } => c.peer.accept_answer(sdp).await,
                    SignalPayload::Candidate {
                        candidate,
                        sdp_mid,
                        sdp_mline_index,
                    } => {
                        c.peer
                            .add_remote_candidate(candidate, sdp_mid, sdp_mline_index)
                            .await
                    }
                };
                if let Err(e) = result {
                    tracing::warn!("signal for {match_id} failed: {e:#}");
                }
            }
            Output::StopPeer => {
                if let Some(c) = call.take() {
                    c.close().await;
                }
                self.remote_video.clear();
                self.update(|s| s.stranger_typing = false);
            }
            Output::Notify(notice) => {
                match &notice {
                    Notice::StrangerTyping(on) => self.update(|s| s.stranger_typing = *on),
                    Notice::Chat { from_me: false, .. } => {
                        self.counters.chat_received.fetch_add(1, Relaxed);
                    }
                    _ => {}
                }
                self.emit(EngineEvent::Notice(notice));
            }
        }
    }

    fn update(&self, f: impl FnOnce(&mut EngineState)) {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        (self.repaint)();
    }

    fn emit(&self, ev: EngineEvent) {
        if self.events.try_send(ev).is_err() {
            tracing::debug!("engine event dropped: nobody is reading");
        }
    }
}

async fn send_signal(
    out: &mpsc::Sender<ClientMessage>,
    match_id: &MatchId,
    payload: &SignalPayload,
) {
    match serde_json::to_value(payload) {
        Ok(payload) => {
            let _ = out
                .send(ClientMessage::Signal {
                    match_id: match_id.clone(),
                    payload,
                })
                .await;
        }
        Err(e) => tracing::error!("cannot encode a signal: {e}"),
    }
}
