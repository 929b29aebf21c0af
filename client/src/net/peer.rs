//! One WebRTC peer connection per match (webrtc 0.21): one video track (H.264, or VP8
//! when the partner lacks H.264) and one Opus track each way, trickle ICE, keyframe
//! requests both ways, stats.
//!
//! The video codec is chosen from the partner's description before the description that
//! starts the media (see [`choose_video_codec`]); the sending track is then re-made for
//! that codec, and this module packetizes video itself, so the packetizer always matches
//! what was negotiated. When the two sides share no video codec, the call carries audio
//! only and the video m-line is rejected.
//!
//! This is the only module that names webrtc types. It takes encoded media in and hands
//! received, depacketized media out through bounded channels, so codecs and the UI are
//! tested without a network.

use super::keyframe::KeyframeRequestForwarder;
use super::receive::{receive_audio, receive_video};
use crate::media::codec::video::VideoCodec;
use anyhow::{anyhow, Context};
use bytes::Bytes;
use peer_stream_shared::{IceServer, SignalPayload};
use rtc::interceptor::{Registry, Slot};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_RTX, MIME_TYPE_VP8,
};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::packetizer::Packetizer;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpRtxParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::PayloadType;
use rtc::statistics::StatsSelector;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc, MediaEngine,
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::RtpSender;

/// RTP payload types we offer; when answering, the offer's numbers win (read them back
/// from the sender after negotiation, never assume these).
const H264_PT: PayloadType = 102;
const VP8_PT: PayloadType = 96;
/// RFC 4588 retransmission formats, one per video codec (`apt=` its payload type), the
/// numbers webrtc's and Chromium's default lists pair with 102 and 96.
const H264_RTX_PT: PayloadType = 103;
const VP8_RTX_PT: PayloadType = 97;
const OPUS_PT: PayloadType = 111;
/// Largest RTP packet we send (what webrtc's own sample tracks use): fits any path MTU
/// with room for SRTP, TURN channel and IPv6 headers.
const RTP_MTU: usize = 1200;
const VIDEO_CLOCK_RATE: u32 = 90_000;
pub const VIDEO_FRAME_DURATION: Duration = Duration::from_millis(33);
pub const AUDIO_FRAME_DURATION: Duration = Duration::from_millis(20);

/// What the peer connection tells its owner.
#[derive(Debug)]
pub enum PeerEvent {
    /// A local ICE candidate to send to the partner (trickle ICE).
    LocalCandidate(SignalPayload),
    /// The connection reached a new state.
    State(PeerState),
    /// The partner asked for a keyframe (PLI/FIR).
    KeyframeRequested,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    Connecting,
    Connected,
    Disconnected,
    Failed,
    Closed,
}

/// One depacketized access unit / Opus packet from the partner.
#[derive(Debug)]
pub struct ReceivedMedia {
    pub data: Bytes,
    pub rtp_timestamp: u32,
    /// Packets missing before this one. Audio: the decoder conceals them (FEC/PLC).
    /// Video: always 0 — the frame assembler hands on only decodable frames and asks for
    /// a keyframe itself after a loss.
    pub dropped_before: u16,
}

/// Where received media goes. Bounded: a full video channel drops the access unit and
/// the video receiver asks for a keyframe instead of queueing without end.
#[derive(Clone)]
pub struct RemoteSinks {
    pub video: std::sync::mpsc::SyncSender<ReceivedMedia>,
    pub audio: std::sync::mpsc::SyncSender<ReceivedMedia>,
    /// The codec of the partner's video track, set when it arrives: the decoder reads it
    /// to pick (or switch) its decoder.
    pub video_codec: Arc<Mutex<Option<VideoCodec>>>,
}

/// Which ICE candidates a call may use (`--ice-policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IcePolicy {
    /// Host, server-reflexive and relay candidates: the most direct path wins.
    #[default]
    All,
    /// TURN relay candidates only: the partner never learns this machine's addresses.
    /// Needs a TURN server from the signaling server; without one no call connects.
    Relay,
}

/// Settings for one connection.
#[derive(Clone, Debug)]
pub struct PeerSettings {
    pub ice_servers: Vec<IceServer>,
    /// Local addresses to gather host candidates on, e.g. `127.0.0.1:0` for loopback tests.
    /// Empty: every non-loopback interface address (plus loopback as a last resort).
    pub udp_addrs: Vec<String>,
    pub ice_policy: IcePolicy,
    /// Video codecs to offer and accept, most preferred first (`--video-codec`).
    pub video_codecs: Vec<VideoCodec>,
}

/// With `--ice-policy relay`, whether the signaling server handed out a TURN server at
/// all; says so once per process (not on every match) when it did not.
fn relay_possible(settings: &PeerSettings) -> bool {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let has_turn = settings.ice_servers.iter().any(|s| {
        s.urls
            .iter()
            .any(|u| u.starts_with("turn:") || u.starts_with("turns:"))
    });
    if !has_turn && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "--ice-policy relay, but the signaling server offers no TURN server: \
             calls cannot connect (ask its operator to set --turn and --turn-secret, \
             or use --ice-policy all)"
        );
    }
    has_turn
}

/// A snapshot of connection-level statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerStats {
    pub rtt_ms: Option<f64>,
    /// host / srflx / prflx / relay of the selected local candidate.
    pub candidate_type: Option<String>,
    pub packets_lost: i64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Fraction of our video packets the partner reported lost (RTCP receiver report).
    pub video_fraction_lost: Option<f64>,
    /// The same for our audio: it sets how much Opus in-band FEC we send.
    pub audio_fraction_lost: Option<f64>,
    /// The congestion controller's estimate of what the path takes from us (bits/s,
    /// all streams): webrtc's GCC on the partner's transport-wide CC feedback.
    pub send_estimate_bps: Option<f64>,
}

/// The partner's video track and SSRC, once it arrived (for keyframe requests).
type RemoteVideo = Arc<Mutex<Option<(Arc<dyn TrackRemote>, u32)>>>;

struct Handler {
    events: mpsc::Sender<PeerEvent>,
    sinks: RemoteSinks,
    remote_video: RemoteVideo,
    /// The addresses we gather on: a loopback candidate goes out only when all are.
    udp_addrs: Vec<String>,
    /// Set by [`Peer::use_relay_only`]: only relay candidates go to the partner.
    relay_only: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                if !super::candidates::offer_local_candidate(&init.candidate, &self.udp_addrs) {
                    tracing::debug!(candidate = %init.candidate, "not offering a loopback candidate");
                    return;
                }
                if self.relay_only.load(Ordering::SeqCst)
                    && !super::candidates::is_relay_candidate(&init.candidate)
                {
                    // The relay-only retry: the gatherer makes none of these any more,
                    // but the agent may re-announce what it kept from before.
                    tracing::debug!(candidate = %init.candidate, "relay-only: not offering");
                    return;
                }
                // An empty mid means "unknown" (the stack fills none in); send it as
                // absent so the partner matches the candidate by m-line index.
                let payload = SignalPayload::Candidate {
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid.filter(|m| !m.is_empty()),
                    sdp_mline_index: init.sdp_mline_index,
                };
                let _ = self.events.send(PeerEvent::LocalCandidate(payload)).await;
            }
            Err(e) => tracing::warn!("cannot serialize a local candidate: {e}"),
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "peer connection state");
        let mapped = match state {
            RTCPeerConnectionState::Connected => PeerState::Connected,
            RTCPeerConnectionState::Disconnected => PeerState::Disconnected,
            RTCPeerConnectionState::Failed => PeerState::Failed,
            RTCPeerConnectionState::Closed => PeerState::Closed,
            _ => PeerState::Connecting,
        };
        let _ = self.events.send(PeerEvent::State(mapped)).await;
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(ssrc) = track.ssrcs().await.first().copied() else {
            return;
        };
        let kind = track.kind().await;
        let mime = track
            .codec(ssrc)
            .await
            .map(|c| c.mime_type.to_lowercase())
            .unwrap_or_default();
        tracing::debug!(?kind, %mime, ssrc, "remote track");
        if kind == RtpCodecKind::Video {
            let Some(codec) = VideoCodec::from_name(&mime).filter(|c| c.is_supported()) else {
                tracing::warn!(%mime, "the partner sends video in a codec this build cannot decode");
                return;
            };
            *self
                .sinks
                .video_codec
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(codec);
            *self
                .remote_video
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some((Arc::clone(&track), ssrc));
            tokio::spawn(receive_video(track, ssrc, codec, self.sinks.video.clone()));
        } else {
            tokio::spawn(receive_audio(track, self.sinks.audio.clone()));
        }
    }
}

fn h264_codec() -> RTCRtpCodec {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
            .to_owned(),
        rtcp_feedback: vec![fb("nack", ""), fb("nack", "pli"), fb("ccm", "fir")],
    }
}

/// Where GCC's estimate starts: the encoders' usual target, plus audio and headers.
const GCC_START_BPS: f64 = 1_200_000.0;
/// GCC's ceiling (the encoder's own target caps video anyway).
const GCC_MAX_BPS: f64 = 10_000_000.0;

/// webrtc's default interceptors (`register_default_interceptors`: NACK both ways, TWCC
/// receiver, RTCP reports), with the NACK generator ticking every 20 ms instead of
/// 100 ms: the frame assembler holds a hole for 150 ms, and a lost NACK or retransmission
/// then still gets another try within it (measured under 5 % loss: 99–100 % of frames
/// decoded instead of 90–97 %). Spelled out rather than replacing the default generator
/// afterwards, which webrtc announces with a warning on every call.
fn interceptors(media: &mut MediaEngine) -> anyhow::Result<Registry> {
    for parameter in ["", "pli"] {
        media.register_feedback(
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    let registry = Registry::new()
        .with(
            Slot::NackResponder,
            rtc::interceptor::NackResponderBuilder::new().build(),
        )
        .with(
            Slot::NackGenerator,
            rtc::interceptor::NackGeneratorBuilder::new()
                .with_interval(Duration::from_millis(20))
                // At most 3 NACKs (60 ms) per lost packet: without a cap a packet is
                // NACKed every 20 ms until its repair arrives, i.e. ~20 times across a
                // congested 500 kb/s link whose queue makes the round trip 400 ms, and
                // each NACK resends it: the repairs then fill the link (netlab `rate`).
                .with_max_nacks_per_packet(3)
                .build(),
        );
    configure_simulcast_extension_headers(media).map_err(|e| anyhow!("interceptors: {e}"))?;
    // Transport-wide CC both ways, and webrtc's GCC on the feedback: its estimate (in
    // the stats, see `stats`) caps the encoder's bitrate, so video follows a bottleneck
    // before its queue overflows. No pacer (webrtc's paces at exactly the estimate and
    // queues without bound when the encoder overshoots, e.g. on a keyframe).
    let registry = configure_twcc(registry, media)
        .map_err(|e| anyhow!("interceptors: {e}"))?
        .with(
            Slot::CongestionControl,
            rtc::interceptor::CongestionControlBuilder::new(rtc::interceptor::Gcc::new(
                GCC_START_BPS,
                rtc::interceptor::GCC_MIN_BITRATE,
                GCC_MAX_BPS,
            ))
            .build(),
        );
    Ok(configure_rtcp_reports(registry))
}

fn vp8_codec() -> RTCRtpCodec {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: VIDEO_CLOCK_RATE,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![fb("nack", ""), fb("nack", "pli"), fb("ccm", "fir")],
    }
}

/// The RTP description of a video codec, with the payload type we offer it under.
fn video_codec_parameters(codec: VideoCodec) -> RTCRtpCodecParameters {
    match codec {
        VideoCodec::H264 => RTCRtpCodecParameters {
            rtp_codec: h264_codec(),
            payload_type: H264_PT,
        },
        VideoCodec::Vp8 => RTCRtpCodecParameters {
            rtp_codec: vp8_codec(),
            payload_type: VP8_PT,
        },
    }
}

/// The RTX (RFC 4588) format repairing `codec`: NACKed packets are resent on their own
/// SSRC (announced as `a=ssrc-group:FID <media> <rtx>`) and payload type, with the
/// original sequence number in the first two payload bytes, as browsers do. Then a
/// retransmission never counts as the media stream's own packet (receiver reports, loss
/// and jitter stay right) and a middlebox or receiver can tell repairs from new media.
/// webrtc 0.21 does both ends: its NACK responder wraps a resent packet when the track's
/// encoding names an RTX SSRC and the partner accepted the format, and the receiving
/// endpoint unwraps it (primary SSRC, payload type and sequence number restored) before
/// the track sees it, so the frame assembler gets the original packet.
fn rtx_codec_parameters(codec: VideoCodec) -> RTCRtpCodecParameters {
    let (payload_type, apt) = match codec {
        VideoCodec::H264 => (H264_RTX_PT, H264_PT),
        VideoCodec::Vp8 => (VP8_RTX_PT, VP8_PT),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_RTX.to_owned(),
            clock_rate: VIDEO_CLOCK_RATE,
            channels: 0,
            sdp_fmtp_line: format!("apt={apt}"),
            rtcp_feedback: vec![],
        },
        payload_type,
    }
}

/// Which video codec to send, from the partner's SDP (offer or answer): H.264 when it
/// lists H.264 in packetization mode 1 (the mode we packetize in), else VP8 when this
/// build has it, else none — also when the partner rejected video (port 0).
pub fn choose_video_codec(sdp: &str, ours: &[VideoCodec]) -> Option<VideoCodec> {
    let mut in_video = false;
    let mut rejected = false;
    // (payload type, codec) from a=rtpmap; payload types with packetization-mode=1.
    let mut listed: Vec<(String, VideoCodec)> = Vec::new();
    let mut mode1: Vec<String> = Vec::new();
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            if in_video {
                break; // only the first video section counts
            }
            let mut parts = m.split_whitespace();
            in_video = parts.next() == Some("video");
            rejected = in_video && parts.next() == Some("0");
            continue;
        }
        if !in_video {
            continue;
        }
        if let Some(rest) = line.strip_prefix("a=rtpmap:") {
            let mut parts = rest.split_whitespace();
            if let (Some(pt), Some(enc)) = (parts.next(), parts.next()) {
                let name = enc.split('/').next().unwrap_or_default();
                if let Some(codec) = VideoCodec::from_name(name) {
                    listed.push((pt.to_owned(), codec));
                }
            }
        } else if let Some(rest) = line.strip_prefix("a=fmtp:") {
            let mut parts = rest.splitn(2, ' ');
            if let (Some(pt), Some(params)) = (parts.next(), parts.next()) {
                if params
                    .split(';')
                    .any(|p| p.trim().eq_ignore_ascii_case("packetization-mode=1"))
                {
                    mode1.push(pt.to_owned());
                }
            }
        }
    }
    if !in_video || rejected {
        return None;
    }
    ours.iter().copied().find(|&want| {
        listed
            .iter()
            .any(|(pt, codec)| *codec == want && (want != VideoCodec::H264 || mode1.contains(pt)))
    })
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// Our sending track's description. RTCP is routed by track id, remote tracks first, so
/// the id must differ from the partner's track of the same kind (two of our apps calling
/// each other would otherwise deliver each other's PLIs to their receive tasks): it
/// carries the SSRC, and so stays the same when the video track is re-made for another
/// codec.
///
/// `rtx_ssrc` (video): the SSRC retransmissions go out on. webrtc binds its NACK
/// responder to the track's own encodings, so it must be named here, not only in the SDP.
fn media_track(
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    ssrc: u32,
    rtx_ssrc: Option<u32>,
) -> MediaStreamTrack {
    let id = format!("peer-stream-{kind}-{ssrc:08x}");
    MediaStreamTrack::new(
        "peer-stream".to_owned(),
        id.clone(),
        id,
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                rtx: rtx_ssrc.map(|ssrc| RTCRtpRtxParameters { ssrc }),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )
}

fn local_track(
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    ssrc: u32,
) -> anyhow::Result<TrackLocalStaticSample> {
    TrackLocalStaticSample::new(Instant::now(), media_track(kind, codec, ssrc, None))
        .map_err(|e| anyhow!("creating the {kind} track: {e}"))
}

/// The sending video track. Its codec is known only once the partner's description
/// arrives, so it packetizes here (webrtc's sample track fixes its packetizer when it is
/// made) and the packetizer is built on the first frame, for the negotiated codec and
/// payload type.
struct VideoOut {
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    /// Where retransmissions go (RTX, see [`rtx_codec_parameters`]).
    rtx_ssrc: u32,
    /// The codec the track was made for.
    first_codec: VideoCodec,
    /// What we send: set by [`Peer::prepare_video`]; `None` before, or when the two sides
    /// share no video codec.
    codec: Mutex<Option<VideoCodec>>,
    packetizer: tokio::sync::Mutex<Option<(PayloadType, Box<dyn Packetizer>)>>,
}

impl VideoOut {
    fn codec(&self) -> Option<VideoCodec> {
        *self.codec.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn write(&self, data: Bytes, duration: Duration) -> anyhow::Result<()> {
        let mut guard = self.packetizer.lock().await;
        if guard.is_none() {
            let codec = self
                .codec()
                .ok_or_else(|| anyhow!("no video codec shared with the partner"))?;
            let params = self
                .sender
                .get_parameters()
                .await
                .map_err(|e| anyhow!("sender parameters: {e}"))?;
            let rtp_codec = video_codec_parameters(codec).rtp_codec;
            let pt = params
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| {
                    c.rtp_codec
                        .mime_type
                        .eq_ignore_ascii_case(&rtp_codec.mime_type)
                })
                .map(|c| c.payload_type)
                .ok_or_else(|| anyhow!("{codec} was not negotiated"))?;
            let payloader = rtp_codec
                .payloader()
                .map_err(|e| anyhow!("{codec} payloader: {e}"))?;
            let packetizer = rtc::rtp::packetizer::new_packetizer(
                Instant::now(),
                RTP_MTU,
                pt,
                self.ssrc,
                payloader,
                Box::new(rtc::rtp::sequence::new_random_sequencer()),
                VIDEO_CLOCK_RATE,
            );
            tracing::debug!(%codec, pt, "sending video");
            *guard = Some((pt, Box::new(packetizer)));
        }
        let Some((pt, packetizer)) = guard.as_mut() else {
            return Err(anyhow!("no packetizer"));
        };
        let samples = (duration.as_secs_f64() * f64::from(VIDEO_CLOCK_RATE)) as u32;
        let packets = packetizer
            .packetize(Instant::now(), &data, samples)
            .map_err(|e| anyhow!("packetize: {e}"))?;
        for mut packet in packets {
            packet.header.payload_type = *pt;
            self.track
                .write_rtp(packet)
                .await
                .map_err(|e| anyhow!("write video: {e}"))?;
        }
        Ok(())
    }
}

/// A sending track with its negotiated payload type (known only after negotiation).
struct Outgoing {
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    payload_type: Mutex<Option<PayloadType>>,
}

impl Outgoing {
    async fn payload_type(&self) -> anyhow::Result<PayloadType> {
        if let Some(pt) = *self
            .payload_type
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            return Ok(pt);
        }
        let params = self
            .sender
            .get_parameters()
            .await
            .map_err(|e| anyhow!("sender parameters: {e}"))?;
        let pt = params
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)
            .ok_or_else(|| anyhow!("no codec negotiated yet"))?;
        *self
            .payload_type
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(pt);
        Ok(pt)
    }

    async fn write(&self, data: Bytes, duration: Duration) -> anyhow::Result<()> {
        let pt = self.payload_type().await?;
        self.track
            .sample_writer(self.ssrc, pt)
            .write_sample(&Sample {
                data,
                duration,
                ..Sample::new(Instant::now())
            })
            .await
            .map_err(|e| anyhow!("write sample: {e}"))
    }
}

/// One peer connection. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Peer {
    inner: Arc<PeerInner>,
}

struct PeerInner {
    pc: Arc<dyn PeerConnection>,
    /// The local addresses ICE gathers on (see `candidates.rs`).
    udp_addrs: Vec<String>,
    video_codecs: Vec<VideoCodec>,
    video: VideoOut,
    audio: Outgoing,
    remote_video: RemoteVideo,
    /// Candidates that arrived before the remote description; added once it is set.
    pending: Mutex<Vec<RTCIceCandidateInit>>,
    remote_set: AtomicBool,
    closed: AtomicBool,
    /// The connection was switched to relay candidates only ([`Peer::use_relay_only`]).
    relay_only: Arc<AtomicBool>,
}

impl Peer {
    /// Builds the connection and adds both sending tracks. Keyframe requests from the
    /// partner and connection events arrive on `events`; received media on `sinks`.
    pub async fn new(
        settings: &PeerSettings,
        events: mpsc::Sender<PeerEvent>,
        sinks: RemoteSinks,
    ) -> anyhow::Result<Self> {
        let mut media = MediaEngine::default();
        for &codec in &settings.video_codecs {
            for params in [video_codec_parameters(codec), rtx_codec_parameters(codec)] {
                media
                    .register_codec(params, RtpCodecKind::Video)
                    .map_err(|e| anyhow!("register {codec}: {e}"))?;
            }
        }
        media
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: opus_codec(),
                    payload_type: OPUS_PT,
                },
                RtpCodecKind::Audio,
            )
            .map_err(|e| anyhow!("register Opus: {e}"))?;
        let registry =
            interceptors(&mut media)?.with(Slot::from(14_000), KeyframeRequestForwarder::default());
        let ice_servers = settings
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        let mut config = RTCConfigurationBuilder::new().with_ice_servers(ice_servers);
        if settings.ice_policy == IcePolicy::Relay {
            relay_possible(settings);
            config = config.with_ice_transport_policy(RTCIceTransportPolicy::Relay);
        }
        let config = config.build();
        let remote_video = Arc::new(Mutex::new(None));
        let udp_addrs = if settings.udp_addrs.is_empty() {
            super::candidates::host_bind_addrs(super::lan_ip())
        } else {
            settings.udp_addrs.clone()
        };
        let relay_only = Arc::new(AtomicBool::new(settings.ice_policy == IcePolicy::Relay));
        let handler = Arc::new(Handler {
            events: events.clone(),
            sinks,
            remote_video: Arc::clone(&remote_video),
            udp_addrs: udp_addrs.clone(),
            relay_only: Arc::clone(&relay_only),
        });
        // ICE checks every 50 ms instead of 200 ms: on a direct path the call connects a
        // few round trips sooner, which is most of call setup. A pair is given up after
        // 200 unanswered checks (10 s, the give-up window), not webrtc's 7: after an ICE
        // restart during an outage the new pairs must outlast the outage, or the restart
        // fails before the network comes back (a 5 s cut then ended the call).
        // A relay pair may be chosen after 0.5 s instead of webrtc's 2 s: a direct path,
        // when there is one, has answered its checks by then (tens of ms on real
        // networks), and a relay-only call no longer idles. With `--ice-policy relay`
        // there is nothing else to wait for.
        let relay_wait = match settings.ice_policy {
            IcePolicy::Relay => Duration::ZERO,
            IcePolicy::All => Duration::from_millis(500),
        };
        let setting_engine = SettingEngineBuilder::new()
            .with_ice_connection_attempts(Some(Duration::from_millis(50)), Some(200))
            .with_relay_acceptance_min_wait(Some(relay_wait))
            // An ICE restart (ours, or the partner's offer) rebinds the UDP sockets and
            // gathers afresh: new host ports and new TURN allocations from new 5-tuples.
            // Without it a restart re-announces the old relay candidate, dead when the
            // TURN server dropped the allocation, and a relay-only retry that re-allocates
            // from the same 5-tuple meets coturn still deleting the old allocation
            // (`437 Allocation Mismatch`, after which webrtc's TURN client gives up).
            .with_discard_local_candidates_during_ice_restart(true)
            // A vanished path is noticed fast: a keepalive every 1 s, disconnected after
            // 2.5 s of silence (the UI says "reconnecting" and the offerer restarts ICE).
            // The session's own timers decide when to give up (10 s, plus 10 s for the
            // relay-only retry, `session/machine.rs`), so ICE's "failed" comes only after
            // both: 2.5 + 17.5 s. It must not come sooner: webrtc 0.21's agent measures
            // "checking too long" from when it *first* entered checking and does not reset
            // that clock on a restart made while still checking, so with 10 s a call that
            // never connected failed 14 ms after its relay-only restart (seen in
            // `tests/relay_retry.rs`). webrtc's defaults are 2 s, 5 s and 25 s.
            .with_ice_timeouts(
                Some(Duration::from_millis(2500)),
                Some(Duration::from_millis(17_500)),
                Some(Duration::from_secs(1)),
            )
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(config)
            .with_setting_engine(setting_engine)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(udp_addrs.clone())
            .build()
            .await
            .map_err(|e| anyhow!("peer connection: {e}"))?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let video_ssrc: u32 = rand::random();
        let video_rtx_ssrc: u32 = rand::random();
        let audio_ssrc: u32 = rand::random();
        // Made for our first choice; re-made in `prepare_video` when the partner needs
        // another codec.
        let first_codec = *settings
            .video_codecs
            .first()
            .ok_or_else(|| anyhow!("no video codec to offer"))?;
        let video_track = Arc::new(TrackLocalStaticRTP::new(media_track(
            RtpCodecKind::Video,
            video_codec_parameters(first_codec).rtp_codec,
            video_ssrc,
            Some(video_rtx_ssrc),
        )));
        let audio_track = Arc::new(local_track(RtpCodecKind::Audio, opus_codec(), audio_ssrc)?);
        let video_sender = pc
            .add_track(Arc::clone(&video_track) as Arc<dyn TrackLocal>)
            .await
            .map_err(|e| anyhow!("add video track: {e}"))?;
        let audio_sender = pc
            .add_track(Arc::clone(&audio_track) as Arc<dyn TrackLocal>)
            .await
            .map_err(|e| anyhow!("add audio track: {e}"))?;
        // Offer (and answer) the video codecs in our order of preference, whatever order
        // the partner listed them in: then a partner that has H.264 sends H.264 too.
        // Each codec with its RTX format: preferences replace the codec list, and a
        // primary listed without its RTX would be offered without retransmission format.
        let preferences: Vec<_> = settings
            .video_codecs
            .iter()
            .flat_map(|&c| [video_codec_parameters(c), rtx_codec_parameters(c)])
            .collect();
        for transceiver in pc.get_transceivers().await {
            let is_video =
                matches!(transceiver.sender().await, Ok(Some(s)) if s.id() == video_sender.id());
            if is_video {
                if let Err(e) = transceiver.set_codec_preferences(preferences.clone()).await {
                    tracing::debug!("video codec preferences: {e}");
                }
            }
        }
        tokio::spawn(watch_keyframe_requests(Arc::clone(&video_track), events));

        Ok(Self {
            inner: Arc::new(PeerInner {
                pc,
                udp_addrs,
                video_codecs: settings.video_codecs.clone(),
                video: VideoOut {
                    track: video_track,
                    sender: video_sender,
                    ssrc: video_ssrc,
                    rtx_ssrc: video_rtx_ssrc,
                    first_codec,
                    codec: Mutex::new(None),
                    packetizer: tokio::sync::Mutex::new(None),
                },
                audio: Outgoing {
                    track: audio_track,
                    sender: audio_sender,
                    ssrc: audio_ssrc,
                    payload_type: Mutex::new(None),
                },
                remote_video,
                pending: Mutex::new(Vec::new()),
                remote_set: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                relay_only,
            }),
        })
    }

    /// Offerer: creates and applies the offer; returns its SDP.
    pub async fn create_offer(&self) -> anyhow::Result<String> {
        let offer = self
            .inner
            .pc
            .create_offer(None)
            .await
            .map_err(|e| anyhow!("create offer: {e}"))?;
        self.set_local(offer, "offer").await
    }

    /// Offerer: restarts ICE on an established connection (new credentials, sockets
    /// rebound, candidates gathered again); returns the new offer's SDP for the partner.
    pub async fn restart_ice(&self) -> anyhow::Result<String> {
        let options = rtc::peer_connection::configuration::RTCOfferOptions { ice_restart: true };
        let offer = self
            .inner
            .pc
            .create_offer(Some(options))
            .await
            .map_err(|e| anyhow!("create ICE restart offer: {e}"))?;
        self.set_local(offer, "ICE restart offer").await
    }

    /// Switches the connection to TURN relay candidates only, for the relay-only retry
    /// of a call that failed with direct candidates (issue #8). Takes effect at the next
    /// gathering, i.e. our next ICE restart (offerer) or the partner's next offer
    /// (answerer): webrtc 0.21 keeps a changed `ice_transport_policy` pending until then.
    /// That restart rebinds our sockets and drops the earlier local candidates (see
    /// `with_discard_local_candidates_during_ice_restart` in [`Peer::new`]), and the
    /// rebuilt gatherers follow the new policy: no host or server-reflexive candidates,
    /// fresh TURN allocations. As a second guard only relay candidates are signalled
    /// from now on. Idempotent.
    pub async fn use_relay_only(&self) -> anyhow::Result<()> {
        if self.inner.relay_only.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // With the restart's socket rebind (see `Peer::new`) the gatherers are rebuilt
        // and take this policy: only TURN allocations, from fresh 5-tuples.
        let current = self.inner.pc.get_configuration().await;
        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(current.ice_servers().to_vec())
            .with_ice_transport_policy(RTCIceTransportPolicy::Relay)
            .build();
        self.inner
            .pc
            .set_configuration(config)
            .await
            .map_err(|e| anyhow!("relay-only configuration: {e}"))?;
        tracing::info!("relay-only: the next ICE gathering uses the TURN relay only");
        Ok(())
    }

    /// Whether only relay candidates are gathered and signalled (`--ice-policy relay`, or
    /// after [`Self::use_relay_only`]).
    pub fn is_relay_only(&self) -> bool {
        self.inner.relay_only.load(Ordering::SeqCst)
    }

    /// Answerer: applies the partner's offer, creates and applies the answer; returns it.
    /// A later offer (an ICE restart) keeps the video already negotiated.
    pub async fn accept_offer(&self, sdp: String) -> anyhow::Result<String> {
        let chosen = choose_video_codec(&sdp, &self.inner.video_codecs);
        let offer = RTCSessionDescription::offer(sdp).map_err(|e| anyhow!("bad offer: {e}"))?;
        if !self.inner.remote_set.load(Ordering::SeqCst) {
            self.prepare_video(chosen, true).await?;
        }
        self.set_remote(offer, "offer").await?;
        let answer = self
            .inner
            .pc
            .create_answer(None)
            .await
            .map_err(|e| anyhow!("create answer: {e}"))?;
        self.set_local(answer, "answer").await
    }

    /// Offerer: applies the partner's answer.
    pub async fn accept_answer(&self, sdp: String) -> anyhow::Result<()> {
        let chosen = choose_video_codec(&sdp, &self.inner.video_codecs);
        let answer = RTCSessionDescription::answer(sdp).map_err(|e| anyhow!("bad answer: {e}"))?;
        if !self.inner.remote_set.load(Ordering::SeqCst) {
            self.prepare_video(chosen, false).await?;
        }
        self.set_remote(answer, "answer").await
    }

    /// Settles the video we send before the description that starts media is applied
    /// (that is when webrtc binds the track's codec to its RTCP and NACK machinery): the
    /// track is re-made for a codec other than our first choice, and with no shared codec the
    /// answerer drops its video sender so its answer rejects the video m-line and the
    /// call goes on with audio.
    async fn prepare_video(
        &self,
        chosen: Option<VideoCodec>,
        answering: bool,
    ) -> anyhow::Result<()> {
        let video = &self.inner.video;
        *video.codec.lock().unwrap_or_else(PoisonError::into_inner) = chosen;
        match chosen {
            Some(codec) if codec == video.first_codec => {}
            Some(codec) => {
                let track = TrackLocalStaticRTP::new(media_track(
                    RtpCodecKind::Video,
                    video_codec_parameters(codec).rtp_codec,
                    video.ssrc,
                    Some(video.rtx_ssrc),
                ));
                video
                    .sender
                    .replace_track(Arc::new(track))
                    .await
                    .map_err(|e| anyhow!("switching video to {codec}: {e}"))?;
            }
            None => {
                tracing::info!("no video codec shared with the partner: audio only");
                if answering {
                    if let Err(e) = self.inner.pc.remove_track(&video.sender).await {
                        tracing::debug!("dropping the video sender: {e}");
                    }
                }
            }
        }
        Ok(())
    }

    /// The video codec negotiated for what we send; `None` before negotiation or when
    /// the partner shares no video codec with us.
    pub fn video_codec(&self) -> Option<VideoCodec> {
        self.inner.video.codec()
    }

    /// Applies our own description; returns its SDP for the partner.
    async fn set_local(&self, desc: RTCSessionDescription, what: &str) -> anyhow::Result<String> {
        let sdp = desc.sdp.clone();
        self.inner
            .pc
            .set_local_description(desc)
            .await
            .map_err(|e| anyhow!("set local {what}: {e}"))?;
        Ok(sdp)
    }

    /// Applies the partner's description, then the candidates that came before it.
    async fn set_remote(&self, desc: RTCSessionDescription, what: &str) -> anyhow::Result<()> {
        self.inner
            .pc
            .set_remote_description(desc)
            .await
            .map_err(|e| anyhow!("set remote {what}: {e}"))?;
        self.remote_description_set().await;
        Ok(())
    }

    async fn remote_description_set(&self) {
        self.inner.remote_set.store(true, Ordering::SeqCst);
        let pending: Vec<_> = std::mem::take(
            &mut *self
                .inner
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for c in pending {
            if let Err(e) = self.inner.pc.add_ice_candidate(c).await {
                tracing::debug!("early remote candidate rejected: {e}");
            }
        }
    }

    /// Adds a partner's candidate (held until the remote description is set).
    /// An empty candidate string is the end-of-candidates marker and is ignored.
    pub async fn add_remote_candidate(
        &self,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: Option<u16>,
    ) -> anyhow::Result<()> {
        if candidate.trim().is_empty() {
            return Ok(());
        }
        if !super::candidates::usable_remote_candidate(&candidate, &self.inner.udp_addrs) {
            tracing::debug!(%candidate, "ignoring a partner's candidate that cannot work here");
            return Ok(());
        }
        let init = RTCIceCandidateInit {
            candidate,
            sdp_mid,
            sdp_mline_index,
            ..Default::default()
        };
        if !self.inner.remote_set.load(Ordering::SeqCst) {
            self.inner
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(init);
            return Ok(());
        }
        self.inner
            .pc
            .add_ice_candidate(init)
            .await
            .map_err(|e| anyhow!("add candidate: {e}"))
    }

    /// Sends one encoded H.264 access unit (Annex-B).
    pub async fn send_video(&self, data: Bytes) -> anyhow::Result<()> {
        self.inner.video.write(data, VIDEO_FRAME_DURATION).await
    }

    /// Sends one 20 ms Opus packet.
    pub async fn send_audio(&self, data: Bytes) -> anyhow::Result<()> {
        self.inner.audio.write(data, AUDIO_FRAME_DURATION).await
    }

    /// Asks the partner for a keyframe (after decode errors or loss).
    pub async fn request_keyframe(&self) {
        let remote = self
            .inner
            .remote_video
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some((track, ssrc)) = remote {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: ssrc,
            };
            let _ = track.write_rtcp(vec![Box::new(pli)]).await;
        }
    }

    pub async fn stats(&self) -> PeerStats {
        let report = self
            .inner
            .pc
            .get_stats(Instant::now(), StatsSelector::None)
            .await;
        let mut out = PeerStats::default();
        let pair = report
            .candidate_pairs()
            .filter(|p| p.nominated)
            .max_by_key(|p| p.bytes_received + p.bytes_sent)
            .or_else(|| {
                report
                    .candidate_pairs()
                    .max_by_key(|p| p.bytes_received + p.bytes_sent)
            });
        if let Some(pair) = pair {
            if pair.current_round_trip_time > 0.0 {
                out.rtt_ms = Some(pair.current_round_trip_time * 1000.0);
            }
            out.bytes_sent = pair.bytes_sent;
            out.bytes_received = pair.bytes_received;
        }
        // The candidate type of the pair ICE selected (none until it has selected one,
        // so a call that never connected reports none).
        let selected = report
            .transport()
            .map(|t| t.selected_candidate_pair_id.as_str())
            .filter(|id| !id.is_empty());
        let selected_local = report
            .candidate_pairs()
            .find(|p| selected.is_some_and(|id| p.stats.id == id))
            .or_else(|| report.candidate_pairs().find(|p| p.nominated))
            .map(|p| p.local_candidate_id.clone());
        if let Some(local_id) = selected_local {
            // The pair names the candidate by its ICE id; the candidate's own stats entry
            // is "RTCLocalIceCandidate_<that id>".
            out.candidate_type = report.iter().find_map(|e| match e {
                rtc::statistics::report::RTCStatsReportEntry::LocalCandidate(c)
                    if c.stats.id == local_id
                        || c.stats.id.strip_prefix("RTCLocalIceCandidate_")
                            == Some(local_id.as_str()) =>
                {
                    Some(c.candidate_type.to_string())
                }
                _ => None,
            });
        }
        for entry in report.iter() {
            if let rtc::statistics::report::RTCStatsReportEntry::RemoteInboundRtp(s) = entry {
                if s.received_rtp_stream_stats.rtp_stream_stats.kind == RtpCodecKind::Audio {
                    out.audio_fraction_lost = Some(s.fraction_lost);
                }
                if s.received_rtp_stream_stats.rtp_stream_stats.kind == RtpCodecKind::Video {
                    out.video_fraction_lost = Some(s.fraction_lost);
                    if out.rtt_ms.is_none() && s.round_trip_time > 0.0 {
                        out.rtt_ms = Some(s.round_trip_time * 1000.0);
                    }
                }
            }
        }
        // One estimate for the connection, copied onto every outbound stream; 0 until
        // the first feedback moved it.
        out.send_estimate_bps = report
            .outbound_rtp_streams()
            .map(|s| s.target_bitrate)
            .find(|b| *b > 0.0);
        out.packets_lost = report
            .inbound_rtp_streams()
            .map(|s| s.received_rtp_stream_stats.packets_lost)
            .sum();
        out
    }

    /// Closes the connection; idempotent.
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.log_repairs().await;
        if let Err(e) = self.inner.pc.close().await {
            tracing::debug!("closing the peer connection: {e}");
        }
    }
}

impl Peer {
    /// Logs (info) how loss was repaired in this call's video, from webrtc's stats: NACKs
    /// the partner sent us and the retransmissions we answered them with, split into RTX
    /// (own SSRC, see [`rtx_codec_parameters`]) and plain resends, and the same the other
    /// way. The loss benchmark in BENCHMARKS.md reads these lines.
    async fn log_repairs(&self) {
        let report = self
            .inner
            .pc
            .get_stats(Instant::now(), StatsSelector::None)
            .await;
        let video = |kind: RtpCodecKind| kind == RtpCodecKind::Video;
        let (mut nacks_received, mut rtx_sent, mut rtx_ssrc_out) = (0u64, 0u64, 0u32);
        for s in report.outbound_rtp_streams() {
            if video(s.sent_rtp_stream_stats.rtp_stream_stats.kind) {
                nacks_received += u64::from(s.nack_count);
                rtx_sent += s.retransmitted_packets_sent;
                rtx_ssrc_out = s.rtx_ssrc;
            }
        }
        let (mut nacks_sent, mut rtx_received, mut lost) = (0u64, 0u64, 0i64);
        for s in report.inbound_rtp_streams() {
            if video(s.received_rtp_stream_stats.rtp_stream_stats.kind) {
                nacks_sent += u64::from(s.nack_count);
                rtx_received += s.retransmitted_packets_received;
                lost += s.received_rtp_stream_stats.packets_lost;
            }
        }
        tracing::info!(
            nacks_received,
            rtx_sent,
            rtx_ssrc_out,
            nacks_sent,
            rtx_received,
            video_packets_lost = lost,
            "video repairs in this call"
        );
    }
}

/// Turns PLI/FIR seen on our sending video track into `KeyframeRequested` events.
async fn watch_keyframe_requests(track: Arc<TrackLocalStaticRTP>, events: mpsc::Sender<PeerEvent>) {
    while let Some(event) = track.poll().await {
        if let TrackLocalEvent::OnRtcpPacket(_) = event {
            if events.send(PeerEvent::KeyframeRequested).await.is_err() {
                break;
            }
        }
    }
}

/// Parses a relayed signal payload.
pub fn parse_signal(payload: serde_json::Value) -> anyhow::Result<SignalPayload> {
    serde_json::from_value(payload).context("unreadable signal payload")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: &[VideoCodec] = &[VideoCodec::H264, VideoCodec::Vp8];

    fn sdp(video: &str) -> String {
        format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n{video}"
        )
    }

    #[test]
    fn h264_in_mode_1_wins_whatever_the_partner_lists_first() {
        // Chromium-like: VP8 first, H.264 in both packetization modes later.
        let offer = sdp("m=video 9 UDP/TLS/RTP/SAVPF 96 102 104\r\n\
             a=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n\
             a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
             a=rtpmap:104 H264/90000\r\n\
             a=fmtp:104 packetization-mode=0;profile-level-id=42e01f\r\n");
        assert_eq!(choose_video_codec(&offer, BOTH), Some(VideoCodec::H264));
        assert_eq!(
            choose_video_codec(&offer, &[VideoCodec::Vp8]),
            Some(VideoCodec::Vp8)
        );
    }

    #[test]
    fn firefox_without_openh264_gets_vp8() {
        let offer = sdp("m=video 9 UDP/TLS/RTP/SAVPF 120 124\r\n\
             a=rtpmap:120 VP8/90000\r\na=rtpmap:124 VP9/90000\r\n");
        assert_eq!(choose_video_codec(&offer, BOTH), Some(VideoCodec::Vp8));
        assert_eq!(choose_video_codec(&offer, &[VideoCodec::H264]), None);
    }

    #[test]
    fn h264_only_in_mode_0_or_a_rejected_video_line_is_no_video() {
        let mode0 = sdp(
            "m=video 9 UDP/TLS/RTP/SAVPF 104\r\na=rtpmap:104 H264/90000\r\n\
             a=fmtp:104 packetization-mode=0\r\n",
        );
        assert_eq!(choose_video_codec(&mode0, &[VideoCodec::H264]), None);
        let rejected = sdp("m=video 0 UDP/TLS/RTP/SAVPF 0\r\n");
        assert_eq!(choose_video_codec(&rejected, BOTH), None);
        assert_eq!(choose_video_codec(&sdp(""), BOTH), None, "no video line");
        assert_eq!(choose_video_codec("garbage", BOTH), None);
    }
}
