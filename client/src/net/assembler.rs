//! A sans-I/O frame assembler: RTP packets in, whole frames out, as early as possible.
//!
//! webrtc-rs's `SampleBuilder` hands a frame on only when the first packet of the *next*
//! frame arrives, which adds one frame interval (33 ms at 30 fps) to every frame. This
//! assembler releases a frame the moment all its packets up to the one with the marker
//! bit are in and it follows the last released frame without a hole (the idea behind
//! str0m's `buffer_rx`). Video frames after a loss are useless until the next keyframe,
//! so a hole is handled like this:
//!
//! 1. A hole in the sequence numbers holds everything after it for [`GAP_WAIT`], the time
//!    a NACK retransmission needs to arrive.
//! 2. A complete keyframe after the hole is released at once (it needs nothing before it).
//! 3. When the wait runs out the incomplete frames are dropped, the assembler asks for a
//!    keyframe ([`Assembler::poll_keyframe_request`], rate-limited, repeated while none
//!    comes) and resumes at the next complete keyframe. It does not resume at the next
//!    complete delta frame: that frame references pictures the decoder never got, so it
//!    would show smeared garbage (or fail to decode) until the keyframe anyway, and the
//!    frames would count as decoded when the picture is broken. That is what libwebrtc's
//!    frame buffer does too (it only hands on frames whose references are decodable).
//!
//! Audio (Opus) has one packet per frame and every frame decodes on its own: a packet is
//! released as soon as it arrives if it is newer than the last one released, with the
//! number of packets missing before it, so the decoder can recover the last lost frame
//! from this packet's in-band FEC and conceal the others; a packet that comes after a
//! newer one was already played is dropped.
//!
//! Sequence numbers are unwrapped to 64 bits against the highest one seen, so wraparound
//! at 65535 is invisible; duplicates and packets older than the last released frame are
//! dropped; the buffer holds at most [`MAX_PACKETS`] packets; a stream whose sequence
//! numbers jump far away (a sender restart) is followed after a few packets.
//!
//! Which codec: the [`FrameDepacketizer`] trait adds keyframe detection to rtc's
//! `Depacketizer` (H.264, VP8, Opus here).

use bytes::{Bytes, BytesMut};
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::codec::opus::OpusPacket;
use rtc::rtp::codec::vp8::Vp8Packet;
use rtc::rtp::packetizer::Depacketizer;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a hole in the sequence numbers holds the frames after it, waiting for a
/// retransmission, before they are dropped and a keyframe is requested. webrtc-rs's NACK
/// generator reports missing packets on a 100 ms tick, so a retransmission arrives 0–100
/// ms + one round trip after the hole is seen: 150 ms covers round trips up to ~50 ms
/// with the default tick (more with a shorter tick). Waiting longer rarely pays: after
/// that, asking for a keyframe (one round trip plus an encode) recovers about as fast,
/// and every millisecond of waiting freezes the picture.
pub const GAP_WAIT: Duration = Duration::from_millis(150);

/// The shortest time between two keyframe requests: a keyframe is large (5–20 packets at
/// 1 Mb/s), so asking again before the last one could arrive only floods the link. The
/// request is repeated at this interval while no keyframe comes (the request or the
/// keyframe itself may be lost).
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// The most packets held. A 720p keyframe at 2.5 Mb/s is ~100 packets, and [`GAP_WAIT`]
/// of a 5 Mb/s stream ~80; 512 leaves room for both before anything is thrown away.
pub const MAX_PACKETS: usize = 512;

/// A packet this many sequence numbers away from where the stream is (either way) is
/// not a late or early packet of this stream but a jump (a sender restarted its
/// sequence): such packets are dropped until [`RESYNC_AFTER`] of them came in a row,
/// then the assembler starts over from them.
const FAR_AWAY: u64 = 3_000;
const RESYNC_AFTER: u32 = 8;

/// Adds what the assembler needs to know about a codec to rtc's depacketizer.
pub trait FrameDepacketizer: Depacketizer {
    /// Whether this RTP payload is surely the first packet of a frame, even when the
    /// packet before it is missing (H.264: the first NAL unit is an access unit
    /// delimiter or an SPS, which only ever open an access unit; VP8: the start of
    /// partition 0; Opus: always).
    fn starts_frame(&self, payload: &[u8]) -> bool;

    /// Whether this RTP payload shows that its frame decodes on its own (H.264: it
    /// carries an IDR slice; VP8: the first packet of a key frame; Opus: always).
    fn marks_keyframe(&self, payload: &[u8]) -> bool;

    /// Whether every RTP packet is one whole frame (audio): released on arrival.
    fn one_packet_per_frame(&self) -> bool {
        false
    }

    /// Forgets partial state (e.g. H.264 FU-A fragments) after a frame failed.
    fn reset(&mut self);
}

const NALU_TYPE_MASK: u8 = 0x1f;
const NALU_IDR: u8 = 5;
const NALU_SPS: u8 = 7;
const NALU_AUD: u8 = 9;
const NALU_STAP_A: u8 = 24;
const NALU_FU_A: u8 = 28;

/// The types of the NAL units an H.264 RTP payload starts (RFC 6184): one for a single
/// NAL unit, all aggregated ones for STAP-A, the fragmented one for the first FU-A.
fn h264_nalu_types(payload: &[u8]) -> Vec<u8> {
    let Some(first) = payload.first() else {
        return Vec::new();
    };
    match first & NALU_TYPE_MASK {
        NALU_STAP_A => {
            // One byte of header, then (two bytes of size, the NAL unit) repeated.
            let mut types = Vec::new();
            let mut at = 1;
            while let (Some(hi), Some(lo)) = (payload.get(at), payload.get(at + 1)) {
                let size = usize::from(*hi) << 8 | usize::from(*lo);
                match payload.get(at + 2) {
                    Some(header) if size > 0 && at + 2 + size <= payload.len() => {
                        types.push(header & NALU_TYPE_MASK);
                    }
                    _ => break,
                }
                at += 2 + size;
            }
            types
        }
        // FU-A: the fragmented NAL unit starts here only with the S bit.
        NALU_FU_A => payload
            .get(1)
            .filter(|fu| *fu & 0x80 != 0)
            .map(|fu| vec![fu & NALU_TYPE_MASK])
            .unwrap_or_default(),
        t => vec![t],
    }
}

impl FrameDepacketizer for H264Packet {
    fn starts_frame(&self, payload: &[u8]) -> bool {
        matches!(
            h264_nalu_types(payload).first(),
            Some(&(NALU_AUD | NALU_SPS))
        )
    }

    fn marks_keyframe(&self, payload: &[u8]) -> bool {
        h264_nalu_types(payload).contains(&NALU_IDR)
    }

    fn reset(&mut self) {
        let is_avc = self.is_avc;
        *self = H264Packet::default();
        self.is_avc = is_avc;
    }
}

/// Where the VP8 payload starts after the payload descriptor (RFC 7741 §4.2), and the
/// descriptor's S bit and partition index.
fn vp8_descriptor(payload: &[u8]) -> Option<(usize, bool, u8)> {
    let b0 = *payload.first()?;
    let start = b0 & 0x10 != 0;
    let pid = b0 & 0x07;
    let mut at = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(at)?;
        at += 1;
        if x & 0x80 != 0 {
            // I: PictureID, 7 or 15 bits (M flag).
            let m = *payload.get(at)? & 0x80 != 0;
            at += if m { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // T and/or K: one byte
        }
    }
    Some((at, start, pid))
}

impl FrameDepacketizer for Vp8Packet {
    fn starts_frame(&self, payload: &[u8]) -> bool {
        matches!(vp8_descriptor(payload), Some((_, true, 0)))
    }

    fn marks_keyframe(&self, payload: &[u8]) -> bool {
        match vp8_descriptor(payload) {
            // The first byte of the VP8 frame header: P (inverse key frame flag) in bit 0.
            Some((at, true, 0)) => payload.get(at).is_some_and(|h| h & 0x01 == 0),
            _ => false,
        }
    }

    fn reset(&mut self) {
        *self = Vp8Packet::default();
    }
}

impl FrameDepacketizer for OpusPacket {
    fn starts_frame(&self, _payload: &[u8]) -> bool {
        true
    }

    fn marks_keyframe(&self, _payload: &[u8]) -> bool {
        true
    }

    fn one_packet_per_frame(&self) -> bool {
        true
    }

    fn reset(&mut self) {}
}

impl Depacketizer for Box<dyn FrameDepacketizer + Send> {
    fn depacketize(&mut self, b: &Bytes) -> rtc::shared::error::Result<Bytes> {
        (**self).depacketize(b)
    }

    fn is_partition_head(&self, payload: &Bytes) -> bool {
        (**self).is_partition_head(payload)
    }

    fn is_partition_tail(&self, marker: bool, payload: &Bytes) -> bool {
        (**self).is_partition_tail(marker, payload)
    }
}

impl FrameDepacketizer for Box<dyn FrameDepacketizer + Send> {
    fn starts_frame(&self, payload: &[u8]) -> bool {
        (**self).starts_frame(payload)
    }

    fn marks_keyframe(&self, payload: &[u8]) -> bool {
        (**self).marks_keyframe(payload)
    }

    fn one_packet_per_frame(&self) -> bool {
        (**self).one_packet_per_frame()
    }

    fn reset(&mut self) {
        (**self).reset();
    }
}

/// One RTP packet, as much of it as the assembler needs.
#[derive(Debug, Clone)]
pub struct RtpIn {
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Bytes,
    pub arrival: Instant,
}

impl RtpIn {
    pub fn from_rtp(packet: rtc::rtp::Packet, arrival: Instant) -> Self {
        RtpIn {
            seq: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            payload: packet.payload,
            arrival,
        }
    }
}

/// A whole depacketized frame (H.264 access unit in Annex B, VP8 frame, Opus packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub data: Bytes,
    pub rtp_timestamp: u32,
    /// Starts with a keyframe (always true for audio).
    pub keyframe: bool,
    /// Packets skipped since the previous released frame (lost, or dropped as part of an
    /// incomplete frame).
    pub lost_before: u64,
}

/// What happened to the packets, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerStats {
    pub frames: u64,
    /// Packets that were never released: lost, or part of a dropped frame.
    pub packets_skipped: u64,
    pub duplicates: u64,
    /// Packets older than the last released frame.
    pub late: u64,
    /// Packets thrown away because the buffer was full.
    pub overflow: u64,
    /// Times a hole was given up on (or a frame failed) and a keyframe was needed.
    pub gave_up: u64,
    pub resyncs: u64,
}

#[derive(Debug)]
struct Held {
    timestamp: u32,
    marker: bool,
    payload: Bytes,
    arrival: Instant,
}

/// See the module docs.
pub struct Assembler<D> {
    depacketizer: D,
    packets: BTreeMap<u64, Held>,
    /// The highest extended sequence number seen (the unwrapping reference).
    highest: Option<u64>,
    /// The extended sequence number right after the last released frame.
    next: Option<u64>,
    /// Nothing decodable can come until a keyframe (at start, after a drop).
    need_keyframe: bool,
    /// Since when a keyframe is needed (requests start only after [`GAP_WAIT`] at the
    /// start of the stream, where the sender opens with one anyway).
    need_keyframe_since: Option<Instant>,
    /// Ask for a keyframe at once (after a drop), not only after the start grace.
    request_now: bool,
    last_request: Option<Instant>,
    far_in_a_row: u32,
    gap_wait: Duration,
    out: VecDeque<Frame>,
    stats: AssemblerStats,
}

impl<D: FrameDepacketizer> Assembler<D> {
    pub fn new(depacketizer: D) -> Self {
        let audio = depacketizer.one_packet_per_frame();
        Assembler {
            depacketizer,
            packets: BTreeMap::new(),
            highest: None,
            next: None,
            need_keyframe: !audio,
            need_keyframe_since: None,
            request_now: false,
            last_request: None,
            far_in_a_row: 0,
            gap_wait: GAP_WAIT,
            out: VecDeque::new(),
            stats: AssemblerStats::default(),
        }
    }

    /// Another hold time for holes than [`GAP_WAIT`] (e.g. from a measured round trip).
    #[must_use]
    pub fn with_gap_wait(mut self, wait: Duration) -> Self {
        self.gap_wait = wait;
        self
    }

    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    /// Packets held right now.
    pub fn buffered(&self) -> usize {
        self.packets.len()
    }

    /// The next frame ready for the decoder.
    pub fn poll_frame(&mut self) -> Option<Frame> {
        self.out.pop_front()
    }

    /// When [`Assembler::handle_timeout`] should be called next if no packet comes: the
    /// end of a hole's wait, or the next keyframe request while one is needed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let gap = self.gap_deadline();
        let request = self.next_request_at();
        match (gap, request) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Lets time pass: gives up on holes whose wait ran out.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.process(now);
    }

    /// True when the sender should be asked for a keyframe now (the caller sends a PLI).
    /// Rate-limited to one per [`KEYFRAME_REQUEST_INTERVAL`], repeated while needed.
    pub fn poll_keyframe_request(&mut self, now: Instant) -> bool {
        match self.next_request_at() {
            Some(at) if at <= now => {
                self.last_request = Some(now);
                self.request_now = false;
                true
            }
            _ => false,
        }
    }

    /// The frame last handed out could not be used (e.g. the decoder's queue was full):
    /// drop everything up to the next keyframe and ask for one.
    pub fn request_keyframe(&mut self, now: Instant) {
        if self.depacketizer.one_packet_per_frame() {
            return;
        }
        self.start_waiting_for_keyframe(now, true);
        self.stats.gave_up += 1;
    }

    pub fn push(&mut self, packet: RtpIn) {
        let now = packet.arrival;
        let Some(ext) = self.admit(&packet) else {
            self.process(now);
            return;
        };
        if self.depacketizer.one_packet_per_frame() {
            self.release_single(ext, packet);
            return;
        }
        if self.need_keyframe {
            self.need_keyframe_since.get_or_insert(now);
        }
        self.packets.insert(
            ext,
            Held {
                timestamp: packet.timestamp,
                marker: packet.marker,
                payload: packet.payload,
                arrival: packet.arrival,
            },
        );
        if self.packets.len() > MAX_PACKETS {
            self.shed(now);
        }
        self.process(now);
    }

    /// Unwraps the sequence number and decides whether the packet is worth keeping.
    fn admit(&mut self, packet: &RtpIn) -> Option<u64> {
        let ext = match self.highest {
            None => (1u64 << 32) + u64::from(packet.seq),
            Some(high) => {
                let delta = i64::from(packet.seq.wrapping_sub(high as u16) as i16);
                high.checked_add_signed(delta)?
            }
        };
        let reference = self.next.or(self.highest).unwrap_or(ext);
        if ext.abs_diff(reference) > FAR_AWAY {
            self.far_in_a_row += 1;
            if self.far_in_a_row < RESYNC_AFTER {
                self.stats.late += 1;
                return None;
            }
            tracing::debug!(
                "RTP sequence jumped by {}: starting over",
                ext.abs_diff(reference)
            );
            self.resync(packet.arrival);
            return self.admit(packet);
        }
        self.far_in_a_row = 0;
        if self.next.is_some_and(|next| ext < next) {
            self.stats.late += 1;
            return None;
        }
        if self.packets.contains_key(&ext) {
            self.stats.duplicates += 1;
            return None;
        }
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        Some(ext)
    }

    fn resync(&mut self, now: Instant) {
        self.stats.resyncs += 1;
        self.stats.packets_skipped += self.packets.len() as u64;
        self.packets.clear();
        self.highest = None;
        self.next = None;
        self.far_in_a_row = 0;
        self.depacketizer.reset();
        if !self.depacketizer.one_packet_per_frame() {
            self.start_waiting_for_keyframe(now, false);
        }
    }

    fn release_single(&mut self, ext: u64, packet: RtpIn) {
        let lost_before = self.next.map_or(0, |next| ext - next);
        self.next = Some(ext + 1);
        match self.depacketizer.depacketize(&packet.payload) {
            Ok(data) => {
                self.stats.frames += 1;
                self.stats.packets_skipped += lost_before;
                self.out.push_back(Frame {
                    data,
                    rtp_timestamp: packet.timestamp,
                    keyframe: true,
                    lost_before,
                });
            }
            Err(e) => {
                tracing::debug!("dropping a malformed packet: {e}");
                self.stats.packets_skipped += lost_before + 1;
            }
        }
    }

    /// The buffer is over its limit: throw away the oldest packets. If they were ahead
    /// of the last released frame, the stream now has a hole that no retransmission can
    /// fill: wait for a keyframe.
    fn shed(&mut self, now: Instant) {
        let mut lost_ahead = false;
        while self.packets.len() > MAX_PACKETS {
            if self.packets.pop_first().is_some() {
                self.stats.overflow += 1;
                lost_ahead = true;
            }
        }
        if lost_ahead && !self.need_keyframe {
            self.give_up(now);
        }
    }

    fn start_waiting_for_keyframe(&mut self, now: Instant, request_now: bool) {
        if !self.need_keyframe {
            self.need_keyframe = true;
            self.need_keyframe_since = Some(now);
        }
        self.need_keyframe_since.get_or_insert(now);
        self.request_now |= request_now;
    }

    fn give_up(&mut self, now: Instant) {
        self.stats.gave_up += 1;
        self.depacketizer.reset();
        self.start_waiting_for_keyframe(now, true);
    }

    fn next_request_at(&self) -> Option<Instant> {
        if !self.need_keyframe {
            return None;
        }
        let since = self.need_keyframe_since?;
        let earliest = if self.request_now {
            since
        } else {
            // At the start of the stream the sender opens with a keyframe: ask only if
            // none came within a hole's wait.
            since + self.gap_wait
        };
        Some(match self.last_request {
            Some(last) => earliest.max(last + KEYFRAME_REQUEST_INTERVAL),
            None => earliest,
        })
    }

    /// The first missing sequence number after the last released frame, if later
    /// packets are already here (a hole, not just the next frame not sent yet), and the
    /// arrival of the first packet after it.
    fn hole(&self) -> Option<(u64, Instant)> {
        let next = self.next?;
        (next..)
            .zip(self.packets.range(next..))
            .find(|(expect, (&ext, _))| ext != *expect)
            .map(|(expect, (_, held))| (expect, held.arrival))
    }

    fn gap_deadline(&self) -> Option<Instant> {
        if self.need_keyframe {
            return None;
        }
        self.hole().map(|(_, seen)| seen + self.gap_wait)
    }

    /// The packets of the frame that starts at `start`, if all are here: same RTP
    /// timestamp, consecutive sequence numbers, ending with the marker bit (or with the
    /// packet before a later timestamp, for a sender that left the marker off).
    fn complete_frame_at(&self, start: u64) -> Option<u64> {
        let timestamp = self.packets.get(&start)?.timestamp;
        for (expect, (&ext, held)) in (start..).zip(self.packets.range(start..)) {
            if ext != expect {
                return None;
            }
            if held.timestamp != timestamp {
                return (ext > start).then_some(ext - 1);
            }
            if held.marker {
                return Some(ext);
            }
        }
        None
    }

    /// Whether the packet `ext` opens a frame: the codec says so, or the packet before
    /// it is here and ended another frame, or it follows the last released frame.
    fn opens_frame(&self, ext: u64, held: &Held) -> bool {
        if self.next == Some(ext) || self.depacketizer.starts_frame(&held.payload) {
            return true;
        }
        match ext.checked_sub(1).and_then(|prev| self.packets.get(&prev)) {
            Some(prev) => prev.marker || prev.timestamp != held.timestamp,
            None => false,
        }
    }

    /// The first complete keyframe held at or after `from`: its first and last packet.
    fn complete_keyframe_from(&self, from: u64) -> Option<(u64, u64)> {
        let mut skip_to = from;
        for (&ext, held) in self.packets.range(from..) {
            if ext < skip_to || !self.opens_frame(ext, held) {
                continue;
            }
            let Some(end) = self.complete_frame_at(ext) else {
                continue;
            };
            if self
                .packets
                .range(ext..=end)
                .any(|(_, p)| self.depacketizer.marks_keyframe(&p.payload))
            {
                return Some((ext, end));
            }
            skip_to = end + 1;
        }
        None
    }

    fn process(&mut self, now: Instant) {
        loop {
            if self.need_keyframe {
                let from = self.packets.first_key_value().map(|(&k, _)| k);
                let Some((start, end)) = from.and_then(|f| self.complete_keyframe_from(f)) else {
                    self.prune_while_waiting(now);
                    return;
                };
                self.release(start, end, now);
                continue;
            }
            let Some(next) = self.next else {
                return;
            };
            if let Some(end) = self.complete_frame_at(next) {
                self.release(next, end, now);
                continue;
            }
            let Some((missing, seen)) = self.hole() else {
                return;
            };
            // A whole keyframe after the hole needs nothing before it.
            if let Some((start, end)) = self.complete_keyframe_from(missing) {
                self.release(start, end, now);
                continue;
            }
            if now < seen + self.gap_wait {
                return;
            }
            tracing::debug!(
                "RTP packet {missing} not retransmitted within {:?}: waiting for a keyframe",
                self.gap_wait
            );
            self.give_up(now);
        }
    }

    /// While a keyframe is needed, throws away what can no longer become part of one:
    /// everything before a hole that was not filled within a hole's wait, and packets
    /// older than that wait that no keyframe start precedes.
    fn prune_while_waiting(&mut self, now: Instant) {
        let stale = |held: &Held| now.saturating_duration_since(held.arrival) > self.gap_wait;
        let mut drop_before = None;
        let mut prev: Option<u64> = None;
        for (&ext, held) in &self.packets {
            if prev.is_some_and(|p| ext != p + 1) && stale(held) {
                drop_before = Some(ext);
            }
            prev = Some(ext);
        }
        let mut dead: Vec<u64> = match drop_before {
            Some(cut) => self.packets.range(..cut).map(|(&k, _)| k).collect(),
            None => Vec::new(),
        };
        // The first packet of the first frame that could be a keyframe: the packet that
        // marks it, moved back over the packets of its frame before it.
        let mut key_start = self
            .packets
            .iter()
            .find(|(_, held)| self.depacketizer.marks_keyframe(&held.payload))
            .map(|(&ext, held)| (ext, held.timestamp));
        while let Some((ext, timestamp)) = key_start {
            match ext.checked_sub(1).and_then(|p| self.packets.get(&p)) {
                Some(prev) if prev.timestamp == timestamp && !prev.marker => {
                    key_start = Some((ext - 1, timestamp));
                }
                _ => break,
            }
        }
        let cut = drop_before.unwrap_or(0);
        dead.extend(
            self.packets
                .range(cut..)
                .take_while(|(&ext, _)| key_start.is_none_or(|(k, _)| ext < k))
                .filter(|(_, held)| stale(held))
                .map(|(&ext, _)| ext),
        );
        for ext in dead {
            self.packets.remove(&ext);
            self.stats.packets_skipped += 1;
        }
    }

    /// Depacketizes the packets `start..=end` into one frame and hands it out.
    fn release(&mut self, start: u64, end: u64, now: Instant) {
        let skipped_before: Vec<u64> = self.packets.range(..start).map(|(&k, _)| k).collect();
        for ext in &skipped_before {
            self.packets.remove(ext);
        }
        let lost_before = self.next.map_or(0, |next| start.saturating_sub(next));
        self.stats.packets_skipped += lost_before.max(skipped_before.len() as u64);
        if self.need_keyframe {
            self.depacketizer.reset();
        }
        let mut data = BytesMut::new();
        let mut keyframe = false;
        let mut rtp_timestamp = 0;
        let mut failed = None;
        for ext in start..=end {
            let Some(held) = self.packets.remove(&ext) else {
                continue;
            };
            rtp_timestamp = held.timestamp;
            keyframe |= self.depacketizer.marks_keyframe(&held.payload);
            if failed.is_none() {
                match self.depacketizer.depacketize(&held.payload) {
                    Ok(part) => data.extend_from_slice(&part),
                    Err(e) => failed = Some(e),
                }
            }
        }
        self.next = Some(end + 1);
        if let Some(e) = failed {
            tracing::debug!("dropping a frame that does not depacketize: {e}");
            self.stats.packets_skipped += end - start + 1;
            self.give_up(now);
            return;
        }
        self.need_keyframe = false;
        self.need_keyframe_since = None;
        self.request_now = false;
        self.stats.frames += 1;
        self.out.push_back(Frame {
            data: data.freeze(),
            rtp_timestamp,
            keyframe,
            lost_before,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS_STEP: u32 = 3_000; // 30 fps at 90 kHz

    struct Stream {
        seq: u16,
        ts: u32,
        t0: Instant,
    }

    impl Stream {
        fn new(seq: u16) -> Self {
            Stream {
                seq,
                ts: 90_000,
                t0: Instant::now(),
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        /// One H.264 frame in `parts` packets at `ms`: a keyframe is an SPS, a PPS and an
        /// IDR slice in FU-A fragments; a delta frame a non-IDR slice in FU-A fragments
        /// (one packet: a single NAL unit).
        fn h264(&mut self, key: bool, parts: usize, ms: u64) -> Vec<RtpIn> {
            let mut payloads: Vec<Vec<u8>> = Vec::new();
            let slice_type = if key { NALU_IDR } else { 1 };
            if key {
                payloads.push(vec![0x67, 0x42, 0xc0, 0x1f]);
                payloads.push(vec![0x68, 0xce, 0x3c, 0x80]);
            }
            if parts == 1 && !key {
                payloads.push(vec![0x41, 0x9a, self.seq as u8, 0x01]);
            } else {
                let fragments = if key { parts.max(3) - 2 } else { parts };
                for i in 0..fragments {
                    let mut fu = slice_type;
                    if i == 0 {
                        fu |= 0x80;
                    }
                    if i + 1 == fragments {
                        fu |= 0x40;
                    }
                    payloads.push(vec![0x7c, fu, i as u8, self.seq as u8]);
                }
            }
            self.packets(payloads, ms)
        }

        fn packets(&mut self, payloads: Vec<Vec<u8>>, ms: u64) -> Vec<RtpIn> {
            let n = payloads.len();
            let out = payloads
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let packet = RtpIn {
                        seq: self.seq,
                        timestamp: self.ts,
                        marker: i + 1 == n,
                        payload: Bytes::from(p),
                        arrival: self.at(ms),
                    };
                    self.seq = self.seq.wrapping_add(1);
                    packet
                })
                .collect();
            self.ts = self.ts.wrapping_add(TS_STEP);
            out
        }
    }

    fn frames<D: FrameDepacketizer>(a: &mut Assembler<D>) -> Vec<Frame> {
        std::iter::from_fn(|| a.poll_frame()).collect()
    }

    fn push_all<D: FrameDepacketizer>(a: &mut Assembler<D>, packets: Vec<RtpIn>) {
        for p in packets {
            a.push(p);
        }
    }

    fn with_arrival(mut packets: Vec<RtpIn>, at: Instant) -> Vec<RtpIn> {
        for p in &mut packets {
            p.arrival = at;
        }
        packets
    }

    #[test]
    fn a_frame_leaves_with_its_marker_packet_not_the_next_frame() {
        let mut s = Stream::new(100);
        let mut a = Assembler::new(H264Packet::default());
        let key = s.h264(true, 5, 0);
        let last = key.len() - 1;
        for (i, p) in key.into_iter().enumerate() {
            a.push(p);
            let out = frames(&mut a);
            if i < last {
                assert!(out.is_empty(), "released before the marker at {i}");
            } else {
                assert_eq!(out.len(), 1);
                assert!(out[0].keyframe);
                assert_eq!(out[0].lost_before, 0);
                assert_eq!(out[0].rtp_timestamp, 90_000);
            }
        }
        for n in 1..=10u64 {
            let delta = s.h264(false, 3, 33 * n);
            let last = delta.len() - 1;
            for (i, p) in delta.into_iter().enumerate() {
                a.push(p);
                let out = frames(&mut a);
                assert_eq!(out.len(), usize::from(i == last), "frame {n} packet {i}");
                if let Some(f) = out.first() {
                    assert!(!f.keyframe);
                    assert_eq!(f.rtp_timestamp, 90_000 + TS_STEP * n as u32);
                }
            }
        }
        assert_eq!(a.buffered(), 0);
        assert_eq!(a.stats().frames, 11);
        assert!(!a.poll_keyframe_request(s.at(10_000)));
    }

    #[test]
    fn the_frame_is_annex_b_of_all_its_nal_units() {
        let mut s = Stream::new(7);
        let mut a = Assembler::new(H264Packet::default());
        push_all(&mut a, s.h264(true, 4, 0));
        let out = frames(&mut a);
        assert_eq!(out.len(), 1);
        let want: Vec<u8> = [
            &[0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f][..],
            &[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80],
            // The FU-A fragments joined behind one rebuilt NAL header (NRI 3, IDR).
            &[0, 0, 0, 1, 0x65, 0, 7, 1, 7],
        ]
        .concat();
        assert_eq!(out[0].data.as_ref(), want.as_slice());
    }

    #[test]
    fn reordered_packets_and_frames_leave_in_order() {
        let mut s = Stream::new(1_000);
        let mut a = Assembler::new(H264Packet::default());
        push_all(&mut a, s.h264(true, 4, 0));
        assert_eq!(frames(&mut a).len(), 1);
        let mut f1 = s.h264(false, 3, 33);
        let f2 = s.h264(false, 3, 66);
        // Inside a frame: the marker packet first.
        f1.rotate_right(1);
        let f1_first = f1.remove(1);
        push_all(&mut a, f1);
        assert!(frames(&mut a).is_empty());
        // The next frame complete before the missing packet of this one.
        push_all(&mut a, f2);
        assert!(frames(&mut a).is_empty(), "frame 2 must wait for frame 1");
        a.push(f1_first);
        let out = frames(&mut a);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].rtp_timestamp, 90_000 + TS_STEP);
        assert_eq!(out[1].rtp_timestamp, 90_000 + 2 * TS_STEP);
        assert!(out.iter().all(|f| f.lost_before == 0));
        assert_eq!(a.stats().gave_up, 0);
    }

    #[test]
    fn duplicates_and_late_packets_are_dropped() {
        let mut s = Stream::new(500);
        let mut a = Assembler::new(H264Packet::default());
        let key = s.h264(true, 4, 0);
        push_all(&mut a, key.clone());
        let delta = s.h264(false, 2, 33);
        a.push(delta[0].clone());
        a.push(delta[0].clone());
        assert_eq!(a.stats().duplicates, 1);
        a.push(delta[1].clone());
        assert_eq!(frames(&mut a).len(), 2);
        // A retransmission of an already released packet (late) and of the whole key.
        push_all(&mut a, key);
        a.push(delta[1].clone());
        assert!(frames(&mut a).is_empty());
        assert_eq!(a.stats().late, 5);
        assert_eq!(a.buffered(), 0);
        push_all(&mut a, s.h264(false, 2, 66));
        assert_eq!(frames(&mut a).len(), 1);
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let mut s = Stream::new(65_530);
        let mut a = Assembler::new(H264Packet::default());
        push_all(&mut a, s.h264(true, 4, 0));
        let mut released = frames(&mut a).len();
        for n in 1..20u64 {
            let mut packets = s.h264(false, 3, 33 * n);
            packets.reverse();
            push_all(&mut a, packets);
            released += frames(&mut a).len();
        }
        assert!(s.seq < 100, "the test did cross 65535");
        assert_eq!(released, 20);
        assert_eq!(
            a.stats().late + a.stats().gave_up + a.stats().packets_skipped,
            0
        );
    }

    #[test]
    fn a_hole_filled_by_a_retransmission_in_time_loses_nothing() {
        let mut s = Stream::new(10);
        let mut a = Assembler::new(H264Packet::default());
        push_all(&mut a, s.h264(true, 4, 0));
        frames(&mut a);
        let mut f1 = s.h264(false, 3, 33);
        let lost = f1.remove(1);
        push_all(&mut a, f1);
        for n in 2..=4u64 {
            push_all(&mut a, s.h264(false, 3, 33 * n));
        }
        assert!(frames(&mut a).is_empty());
        let deadline = a.poll_timeout().expect("a hole has a deadline");
        assert_eq!(deadline, s.at(33) + GAP_WAIT);
        a.handle_timeout(s.at(120));
        assert!(!a.poll_keyframe_request(s.at(120)));
        let mut lost = lost;
        lost.arrival = s.at(140);
        a.push(lost);
        let out = frames(&mut a);
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|f| f.lost_before == 0 && !f.keyframe));
        assert!(!a.poll_keyframe_request(s.at(1_000)));
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn an_unfilled_hole_drops_frames_asks_for_a_keyframe_and_resumes_there() {
        let mut s = Stream::new(40_000);
        let mut a = Assembler::new(H264Packet::default());
        push_all(&mut a, s.h264(true, 4, 0));
        frames(&mut a);
        let mut f1 = s.h264(false, 3, 33);
        f1.remove(2); // the marker packet of frame 1: gone for good
        push_all(&mut a, f1);
        push_all(&mut a, s.h264(false, 3, 66));
        assert!(frames(&mut a).is_empty());
        a.handle_timeout(s.at(66) + GAP_WAIT - Duration::from_millis(1));
        assert!(!a.poll_keyframe_request(s.at(200)));
        let gave_up_at = s.at(66) + GAP_WAIT;
        a.handle_timeout(gave_up_at);
        assert!(a.poll_keyframe_request(gave_up_at), "PLI right away");
        assert!(!a.poll_keyframe_request(gave_up_at + Duration::from_millis(10)));
        // Delta frames after the drop cannot decode: held back.
        push_all(&mut a, s.h264(false, 3, 250));
        push_all(&mut a, s.h264(false, 2, 283));
        assert!(frames(&mut a).is_empty());
        // Still no keyframe after the request interval: ask again.
        let again = gave_up_at + KEYFRAME_REQUEST_INTERVAL;
        assert_eq!(a.poll_timeout(), Some(again));
        assert!(!a.poll_keyframe_request(again - Duration::from_millis(1)));
        assert!(a.poll_keyframe_request(again));
        let key_seq = s.seq;
        push_all(&mut a, s.h264(true, 5, 700));
        let out = frames(&mut a);
        assert_eq!(out.len(), 1);
        assert!(out[0].keyframe);
        // 1 lost + 2 held of frame 1, 3 of frame 2, 3 + 2 of the held deltas.
        assert_eq!(out[0].lost_before, u64::from(key_seq.wrapping_sub(40_004)));
        assert_eq!(out[0].lost_before, 11);
        assert!(!a.poll_keyframe_request(s.at(5_000)));
        push_all(&mut a, s.h264(false, 3, 733));
        assert_eq!(frames(&mut a).len(), 1);
        assert_eq!(a.stats().gave_up, 1);
        assert_eq!(a.buffered(), 0);
    }

    #[test]
    fn a_complete_keyframe_after_a_hole_leaves_at_once() {
        let mut s = Stream::new(300);
        let mut a = Assembler::new(H264Packet::default());
        push_all(&mut a, s.h264(true, 4, 0));
        frames(&mut a);
        let mut f1 = s.h264(false, 3, 33);
        f1.remove(0);
        push_all(&mut a, f1);
        push_all(&mut a, s.h264(true, 6, 40));
        let out = frames(&mut a);
        assert_eq!(out.len(), 1);
        assert!(out[0].keyframe);
        assert_eq!(out[0].lost_before, 3);
        assert!(!a.poll_keyframe_request(s.at(1_000)));
        assert_eq!(a.stats().gave_up, 0);
    }

    #[test]
    fn a_stream_joined_without_its_keyframe_asks_for_one_after_the_grace() {
        let mut s = Stream::new(9);
        let mut a = Assembler::new(H264Packet::default());
        push_all(&mut a, s.h264(false, 3, 0));
        push_all(&mut a, s.h264(false, 3, 33));
        assert!(frames(&mut a).is_empty());
        assert!(!a.poll_keyframe_request(s.at(33)));
        assert_eq!(a.poll_timeout(), Some(s.at(0) + GAP_WAIT));
        assert!(a.poll_keyframe_request(s.at(0) + GAP_WAIT));
        push_all(&mut a, s.h264(true, 3, 200));
        let out = frames(&mut a);
        assert_eq!(out.len(), 1);
        assert!(out[0].keyframe);
        assert_eq!(a.buffered(), 0);
    }

    #[test]
    fn the_first_frame_a_keyframe_needs_no_request() {
        let mut s = Stream::new(9);
        let mut a = Assembler::new(H264Packet::default());
        let mut key = s.h264(true, 5, 0);
        key.swap(0, 3); // even reordered
        push_all(&mut a, key);
        assert_eq!(frames(&mut a).len(), 1);
        assert!(!a.poll_keyframe_request(s.at(10_000)));
    }

    #[test]
    fn a_full_decoder_queue_drops_deltas_until_a_keyframe() {
        let mut s = Stream::new(9);
        let mut a = Assembler::new(H264Packet::default());
        push_all(&mut a, s.h264(true, 4, 0));
        frames(&mut a);
        a.request_keyframe(s.at(10));
        assert!(a.poll_keyframe_request(s.at(10)));
        push_all(&mut a, s.h264(false, 2, 33));
        assert!(frames(&mut a).is_empty());
        push_all(&mut a, s.h264(true, 4, 66));
        let out = frames(&mut a);
        assert_eq!(out.len(), 1);
        assert!(out[0].keyframe);
    }

    #[test]
    fn the_buffer_is_bounded() {
        let mut s = Stream::new(60_000);
        let mut a = Assembler::new(H264Packet::default());
        push_all(&mut a, s.h264(true, 4, 0));
        frames(&mut a);
        // A hole, then far more packets than the limit, all in the same instant (no
        // time passes, so the hole's wait never runs out).
        s.seq = s.seq.wrapping_add(1);
        for _ in 0..200 {
            push_all(&mut a, with_arrival(s.h264(false, 5, 0), s.at(1)));
            assert!(a.buffered() <= MAX_PACKETS);
        }
        assert!(a.stats().overflow >= 1_000 - MAX_PACKETS as u64);
        assert!(a.poll_keyframe_request(s.at(1)), "overflow lost data");
        push_all(&mut a, with_arrival(s.h264(true, 4, 0), s.at(2)));
        let out = frames(&mut a);
        assert_eq!(out.len(), 1);
        assert!(out[0].keyframe);
        assert_eq!(a.buffered(), 0);
    }

    #[test]
    fn waiting_for_a_keyframe_does_not_hoard_packets() {
        let mut s = Stream::new(1);
        let mut a = Assembler::new(H264Packet::default());
        for n in 0..300u64 {
            push_all(&mut a, s.h264(false, 3, 33 * n));
            let at = s.at(33 * n);
            a.handle_timeout(at);
            a.poll_keyframe_request(at);
        }
        // 10 s of delta frames: only about a hole's wait of them is kept.
        assert!(a.buffered() <= 3 * 6, "{} packets held", a.buffered());
        assert!(frames(&mut a).is_empty());
    }

    #[test]
    fn a_sequence_jump_starts_over() {
        let mut s = Stream::new(100);
        let mut a = Assembler::new(H264Packet::default());
        push_all(&mut a, s.h264(true, 3, 0));
        assert_eq!(frames(&mut a).len(), 1);
        // One stray packet far away is ignored.
        let mut stray = s.h264(false, 1, 10);
        stray[0].seq = 30_000;
        s.seq = s.seq.wrapping_sub(1);
        push_all(&mut a, stray);
        assert_eq!(a.buffered(), 0);
        push_all(&mut a, s.h264(false, 2, 33));
        assert_eq!(frames(&mut a).len(), 1);
        // A sender that restarted at another sequence number is followed.
        s.seq = 20_000;
        push_all(&mut a, s.h264(false, 4, 66));
        push_all(&mut a, s.h264(false, 4, 99));
        push_all(&mut a, s.h264(true, 4, 133));
        push_all(&mut a, s.h264(false, 2, 166));
        let out = frames(&mut a);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].keyframe);
        assert_eq!(a.stats().resyncs, 1);
    }

    #[test]
    fn h264_keyframes_and_frame_starts_are_recognised() {
        let d = H264Packet::default();
        // STAP-A with SPS, PPS, IDR.
        let stap = [24, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce, 0, 2, 0x65, 0x88];
        assert!(d.starts_frame(&stap));
        assert!(d.marks_keyframe(&stap));
        assert!(d.marks_keyframe(&[0x65, 0x88, 0x80]));
        assert!(!d.starts_frame(&[0x65, 0x88, 0x80]));
        assert!(d.marks_keyframe(&[0x7c, 0x85, 0]));
        assert!(!d.marks_keyframe(&[0x7c, 0x05, 0]), "FU-A middle");
        assert!(!d.marks_keyframe(&[0x41, 0x9a]));
        assert!(!d.marks_keyframe(&[0x7c, 0x81, 0]));
        assert!(d.starts_frame(&[0x09, 0xf0]), "AUD");
        assert!(
            !d.marks_keyframe(&[24, 0, 40, 0x65]),
            "truncated STAP-A is not trusted"
        );
        assert!(!d.marks_keyframe(&[]));
    }

    /// VP8 payload descriptor + the first byte of the VP8 payload header.
    fn vp8(start: bool, pid: u8, ext: Option<&[u8]>, header: u8) -> Vec<u8> {
        let mut b0 = pid;
        if start {
            b0 |= 0x10;
        }
        let mut p = Vec::new();
        if let Some(ext) = ext {
            p.push(b0 | 0x80);
            p.extend_from_slice(ext);
        } else {
            p.push(b0);
        }
        p.extend_from_slice(&[header, 0x11, 0x22, 0x33]);
        p
    }

    #[test]
    fn vp8_keyframes_are_recognised() {
        let d = Vp8Packet::default();
        assert!(d.marks_keyframe(&vp8(true, 0, None, 0x10)));
        assert!(!d.marks_keyframe(&vp8(true, 0, None, 0x11)), "P bit set");
        assert!(
            !d.marks_keyframe(&vp8(false, 0, None, 0x10)),
            "not the start"
        );
        assert!(!d.marks_keyframe(&vp8(true, 1, None, 0x10)), "partition 1");
        // X, I with a 15-bit picture id, L, T/K.
        let ext = [0xf0, 0x80 | 0x12, 0x34, 0x05, 0x40];
        assert!(d.marks_keyframe(&vp8(true, 0, Some(&ext), 0x10)));
        assert!(!d.marks_keyframe(&vp8(true, 0, Some(&ext), 0x31)));
        // X, I with a 7-bit picture id only.
        assert!(d.marks_keyframe(&vp8(true, 0, Some(&[0x80, 0x12]), 0x00)));
        assert!(d.starts_frame(&vp8(true, 0, Some(&[0x80, 0x12]), 0x01)));
        assert!(!d.starts_frame(&vp8(false, 0, Some(&[0x80, 0x12]), 0x01)));
        assert!(!d.marks_keyframe(&[0x90]));
    }

    #[test]
    fn vp8_frames_assemble_and_resume_at_a_keyframe() {
        let mut s = Stream::new(65_534);
        let mut a: Assembler<Box<dyn FrameDepacketizer + Send>> =
            Assembler::new(Box::new(Vp8Packet::default()));
        let ext = [0x80, 0x05];
        let frame = |key: bool| {
            vec![
                vp8(true, 0, Some(&ext), if key { 0x10 } else { 0x11 }),
                vp8(false, 0, Some(&ext), 0xaa),
                vp8(false, 0, Some(&ext), 0xbb),
            ]
        };
        push_all(&mut a, s.packets(frame(true), 0));
        let out = frames(&mut a);
        assert_eq!(out.len(), 1);
        assert!(out[0].keyframe);
        assert_eq!(
            out[0].data.as_ref(),
            [
                [0x10, 0x11, 0x22, 0x33],
                [0xaa, 0x11, 0x22, 0x33],
                [0xbb, 0x11, 0x22, 0x33]
            ]
            .concat()
            .as_slice()
        );
        let mut lossy = s.packets(frame(false), 33);
        lossy.remove(1);
        push_all(&mut a, lossy);
        push_all(&mut a, s.packets(frame(false), 66));
        a.handle_timeout(s.at(66) + GAP_WAIT);
        assert!(a.poll_keyframe_request(s.at(66) + GAP_WAIT));
        assert!(frames(&mut a).is_empty());
        push_all(&mut a, s.packets(frame(true), 300));
        push_all(&mut a, s.packets(frame(false), 333));
        let out = frames(&mut a);
        assert_eq!(out.len(), 2);
        assert!(out[0].keyframe && !out[1].keyframe);
        assert_eq!(out[0].lost_before, 6);
    }

    #[test]
    fn opus_packets_leave_on_arrival_with_the_count_of_missing_ones() {
        let mut s = Stream::new(65_533);
        let mut a = Assembler::new(OpusPacket);
        let packet = |s: &mut Stream, ms| {
            let mut p = s.packets(vec![vec![0x78, ms as u8]], ms);
            p.remove(0)
        };
        let p0 = packet(&mut s, 0);
        let p1 = packet(&mut s, 20);
        let p2 = packet(&mut s, 40);
        let p3 = packet(&mut s, 60);
        let p4 = packet(&mut s, 80);
        a.push(p0);
        a.push(p2.clone());
        a.push(p1); // late: p2 was played already
        a.push(p2); // duplicate
        a.push(p4.clone());
        a.push(p3);
        let out = frames(&mut a);
        assert_eq!(out.len(), 3);
        assert_eq!(
            out.iter().map(|f| f.lost_before).collect::<Vec<_>>(),
            [0, 1, 1]
        );
        assert_eq!(out[2].data.as_ref(), p4.payload.as_ref());
        assert!(out.iter().all(|f| f.keyframe));
        assert_eq!(a.stats().late, 3);
        assert_eq!(a.buffered(), 0);
        assert_eq!(a.poll_timeout(), None);
        assert!(!a.poll_keyframe_request(s.at(10_000)));
    }
}
