//! The receive side of a peer connection: one task per remote track turns RTP packets
//! into whole frames (H.264 access units, Opus packets) and hands them to the decoders.
//! Each runs in its own task so the track's bounded event queue never fills up behind a
//! slow decoder.

use super::peer::ReceivedMedia;
use rtc::media::io::sample_builder::SampleBuilder;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::codec::opus::OpusPacket;
use std::sync::Arc;
use std::time::Instant;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

/// Rebuilds H.264 access units from RTP and hands them on. Runs in its own task so the
/// track's bounded event queue never fills up behind a slow decoder.
pub(super) async fn receive_video(
    track: Arc<dyn TrackRemote>,
    ssrc: u32,
    sink: std::sync::mpsc::SyncSender<ReceivedMedia>,
) {
    let mut builder = SampleBuilder::new(512, H264Packet::default(), 90_000);
    let mut want_keyframe = false;
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                let now = Instant::now();
                builder.push(now, packet);
                while let Some((sample, rtp_timestamp)) = builder.pop_with_timestamp(now) {
                    let media = ReceivedMedia {
                        data: sample.data,
                        rtp_timestamp,
                        dropped_before: sample.prev_dropped_packets,
                    };
                    if sink.try_send(media).is_err() {
                        want_keyframe = true;
                    }
                }
                if want_keyframe {
                    want_keyframe = false;
                    let pli = PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc: ssrc,
                    };
                    let _ = track.write_rtcp(vec![Box::new(pli)]).await;
                }
            }
            TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError => break,
            _ => {}
        }
    }
    tracing::debug!("remote video track ended");
}

pub(super) async fn receive_audio(
    track: Arc<dyn TrackRemote>,
    sink: std::sync::mpsc::SyncSender<ReceivedMedia>,
) {
    let mut builder = SampleBuilder::new(64, OpusPacket, 48_000);
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                let now = Instant::now();
                builder.push(now, packet);
                while let Some((sample, rtp_timestamp)) = builder.pop_with_timestamp(now) {
                    let _ = sink.try_send(ReceivedMedia {
                        data: sample.data,
                        rtp_timestamp,
                        dropped_before: sample.prev_dropped_packets,
                    });
                }
            }
            TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError => break,
            _ => {}
        }
    }
    tracing::debug!("remote audio track ended");
}
