//! Sender bitrate control: the video encoder's target follows the path.
//!
//! Two inputs, the lower wins:
//! - loss from the receiver's RTCP reports (the part of GCC that needs nothing but the
//!   `fraction lost` every receiver sends): back off when the partner loses packets,
//!   creep back up while it does not;
//! - the send-side congestion controller's estimate of the path (webrtc's GCC, fed by
//!   the partner's transport-wide CC feedback, see `net/peer.rs`), which sees a
//!   bottleneck's queue grow before it drops anything. It counts every byte that leaves
//!   (audio, retransmissions, headers), so video gets [`VIDEO_SHARE`] of it less the audio.

/// The share of the path estimate video may use (the rest: RTP/SRTP headers, RTX).
pub const VIDEO_SHARE: f64 = 0.85;
/// What Opus and its in-band FEC take out of the estimate first (bits/s).
pub const AUDIO_RESERVE_BPS: f64 = 40_000.0;
/// Smallest change worth telling the encoder: openh264 changes its bitrate only by
/// starting afresh with a keyframe, and a keyframe is the largest burst a bottleneck
/// sees, so the target moves in steps of 10 % or more.
const MIN_STEP: f64 = 0.10;
/// Reports (one a second) after a decrease before the target may rise again: the path
/// estimate wobbles, and each wobble up and down would cost two keyframes.
const HOLD_AFTER_DECREASE: u32 = 5;

#[derive(Clone, Debug)]
pub struct BitrateController {
    min: u32,
    max: u32,
    /// The loss-based target.
    loss_based: u32,
    /// The video share of the latest path estimate, if one came.
    path_cap: Option<u32>,
    /// What the encoder was last told.
    current: u32,
    /// Reports since the target last went down.
    since_decrease: u32,
}

impl BitrateController {
    /// Starts at `target`, never leaves `[target / 8, target]`.
    pub fn new(target: u32) -> Self {
        Self {
            min: (target / 8).max(64_000),
            max: target,
            loss_based: target,
            path_cap: None,
            current: target,
            since_decrease: HOLD_AFTER_DECREASE,
        }
    }

    pub fn current(&self) -> u32 {
        self.current
    }

    /// Feeds one report (`fraction_lost` in 0.0–1.0); returns the new bitrate when it
    /// changed enough to be worth telling the encoder.
    pub fn on_report(&mut self, fraction_lost: f64) -> Option<u32> {
        self.since_decrease = self.since_decrease.saturating_add(1);
        let loss = fraction_lost.clamp(0.0, 1.0);
        let base = f64::from(self.loss_based);
        let next = if loss > 0.10 {
            base * (1.0 - 0.5 * loss)
        } else if loss < 0.02 {
            base * 1.08
        } else {
            base
        };
        self.loss_based = (next as u32).clamp(self.min, self.max);
        self.publish()
    }

    /// Feeds the congestion controller's estimate of the whole send rate the path takes
    /// (bits/s); returns the new bitrate when it changed enough to tell the encoder.
    pub fn on_estimate(&mut self, path_bps: f64) -> Option<u32> {
        if !path_bps.is_finite() || path_bps <= 0.0 {
            return None;
        }
        let video = (path_bps * VIDEO_SHARE - AUDIO_RESERVE_BPS).max(0.0);
        self.path_cap = Some((video as u32).clamp(self.min, self.max));
        self.publish()
    }

    fn publish(&mut self) -> Option<u32> {
        let next = self
            .path_cap
            .map_or(self.loss_based, |cap| cap.min(self.loss_based));
        let step = f64::from(next.abs_diff(self.current)) / f64::from(self.current.max(1));
        let at_bound = next != self.current && (next == self.max || next == self.min);
        let publish = if next < self.current {
            step >= MIN_STEP || at_bound
        } else {
            (step >= MIN_STEP || at_bound) && self.since_decrease >= HOLD_AFTER_DECREASE
        };
        if !publish {
            return None;
        }
        if next < self.current {
            self.since_decrease = 0;
        }
        self.current = next;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_on_loss_and_recovers() {
        let mut c = BitrateController::new(1_000_000);
        assert_eq!(c.on_report(0.0), None, "already at the target");
        let after_loss = c.on_report(0.3).expect("backs off");
        assert_eq!(after_loss, 850_000);
        for _ in 0..20 {
            c.on_report(0.5);
        }
        assert_eq!(c.current(), 125_000, "never below the floor");
        let mut steps = 0;
        while c.current() < 1_000_000 && steps < 100 {
            c.on_report(0.0);
            steps += 1;
        }
        assert_eq!(c.current(), 1_000_000, "recovers to the target, not above");
        assert_eq!(c.on_report(0.05), None, "moderate loss holds");
    }

    #[test]
    fn the_path_estimate_caps_the_loss_based_target() {
        let mut c = BitrateController::new(1_000_000);
        // A 500 kb/s path: 85 % of it less the audio reserve.
        assert_eq!(c.on_estimate(500_000.0), Some(385_000));
        assert_eq!(
            c.on_report(0.0),
            None,
            "no loss cannot lift it over the path"
        );
        assert_eq!(
            c.on_estimate(490_000.0),
            None,
            "a 2 % wobble is not worth a change"
        );
        assert_eq!(
            c.on_estimate(700_000.0),
            None,
            "no rise right after a decrease"
        );
        // Loss below the cap wins.
        for _ in 0..5 {
            c.on_report(0.5);
        }
        assert!(c.current() < 385_000);
        // A wide path leaves the loss-based target in charge; never above the maximum.
        c.on_estimate(50_000_000.0);
        for _ in 0..100 {
            c.on_report(0.0);
        }
        assert_eq!(c.current(), 1_000_000);
        // A collapsed estimate stops at the floor; nonsense is ignored.
        assert_eq!(c.on_estimate(10_000.0), Some(125_000));
        assert_eq!(c.on_estimate(f64::NAN), None);
        assert_eq!(c.on_estimate(-1.0), None);
        assert_eq!(c.current(), 125_000);
    }
}
