//! The receive side of a peer connection: one task per remote track turns RTP packets
//! into whole frames (H.264 access units, VP8 frames, Opus packets) with the frame
//! [`Assembler`] and hands them to the decoders. Each runs in its own task so the
//! track's bounded event queue never fills up behind a slow decoder.

use super::assembler::{Assembler, FrameDepacketizer, RtpIn};
use super::peer::ReceivedMedia;
use crate::media::codec::video::VideoCodec;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::codec::opus::OpusPacket;
use rtc::rtp::codec::vp8::Vp8Packet;
use std::sync::Arc;
use std::time::Instant;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

/// Rebuilds video frames (H.264 access units, VP8 frames) from RTP and hands them on.
pub(super) async fn receive_video(
    track: Arc<dyn TrackRemote>,
    ssrc: u32,
    codec: VideoCodec,
    sink: std::sync::mpsc::SyncSender<ReceivedMedia>,
) {
    match codec {
        VideoCodec::H264 => receive_video_with(track, ssrc, H264Packet::default(), sink).await,
        VideoCodec::Vp8 => receive_video_with(track, ssrc, Vp8Packet::default(), sink).await,
    }
}

/// Rebuilds video frames with `depacketizer` (`H264Packet`, `Vp8Packet`, or a
/// `Box<dyn FrameDepacketizer + Send>` picked by the track's codec) and hands them on.
/// Every frame handed on decodes: after a loss the assembler skips to the next keyframe
/// and this task asks for one (PLI), so `dropped_before` is always 0 here.
pub(super) async fn receive_video_with<D: FrameDepacketizer + Send>(
    track: Arc<dyn TrackRemote>,
    ssrc: u32,
    depacketizer: D,
    sink: std::sync::mpsc::SyncSender<ReceivedMedia>,
) {
    receive(track, ssrc, Assembler::new(depacketizer), sink, false).await;
    tracing::debug!("remote video track ended");
}

/// Hands Opus packets on as they arrive, with `dropped_before` = packets missing before
/// this one (the decoder conceals them and recovers the last from in-band FEC).
pub(super) async fn receive_audio(
    track: Arc<dyn TrackRemote>,
    sink: std::sync::mpsc::SyncSender<ReceivedMedia>,
) {
    receive(track, 0, Assembler::new(OpusPacket), sink, true).await;
    tracing::debug!("remote audio track ended");
}

async fn receive<D: FrameDepacketizer + Send>(
    track: Arc<dyn TrackRemote>,
    ssrc: u32,
    mut assembler: Assembler<D>,
    sink: std::sync::mpsc::SyncSender<ReceivedMedia>,
    report_loss: bool,
) {
    loop {
        // Wake for the assembler's deadlines too (a hole's wait, a repeated keyframe
        // request) when no packet comes.
        let event = match assembler.poll_timeout() {
            Some(at) => {
                match tokio::time::timeout_at(tokio::time::Instant::from_std(at), track.poll())
                    .await
                {
                    Ok(event) => event,
                    Err(_) => {
                        assembler.handle_timeout(Instant::now());
                        hand_on(&track, ssrc, &mut assembler, &sink, report_loss).await;
                        continue;
                    }
                }
            }
            None => track.poll().await,
        };
        match event {
            Some(TrackRemoteEvent::OnRtpPacket(packet)) => {
                assembler.push(RtpIn::from_rtp(packet, Instant::now()));
                hand_on(&track, ssrc, &mut assembler, &sink, report_loss).await;
            }
            Some(TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError) | None => break,
            Some(_) => {}
        }
    }
    tracing::debug!("frame assembler: {:?}", assembler.stats());
}

/// Sends the finished frames to the decoder and the keyframe request, if one is due.
/// `report_loss`: tell the decoder how many packets were missing before each frame
/// (audio); video frames always decode, so the decoder has no keyframe to ask for.
async fn hand_on<D: FrameDepacketizer>(
    track: &Arc<dyn TrackRemote>,
    ssrc: u32,
    assembler: &mut Assembler<D>,
    sink: &std::sync::mpsc::SyncSender<ReceivedMedia>,
    report_loss: bool,
) {
    while let Some(frame) = assembler.poll_frame() {
        let media = ReceivedMedia {
            data: frame.data,
            rtp_timestamp: frame.rtp_timestamp,
            dropped_before: if report_loss {
                u16::try_from(frame.lost_before).unwrap_or(u16::MAX)
            } else {
                0
            },
        };
        if sink.try_send(media).is_err() {
            // The decoder is behind: the frames after this one cannot decode without it.
            assembler.request_keyframe(Instant::now());
        }
    }
    if assembler.poll_keyframe_request(Instant::now()) {
        tracing::debug!("asking for a keyframe");
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        let _ = track.write_rtcp(vec![Box::new(pli)]).await;
    }
}
