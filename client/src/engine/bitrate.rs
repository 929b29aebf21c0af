//! Loss-based sender bitrate control from the receiver's RTCP reports (the part of GCC
//! that needs nothing but the `fraction lost` every receiver sends): back off when the
//! partner loses packets, creep back up while it does not.

#[derive(Clone, Debug)]
pub struct BitrateController {
    min: u32,
    max: u32,
    current: u32,
}

impl BitrateController {
    /// Starts at `target`, never leaves `[target / 8, target]`.
    pub fn new(target: u32) -> Self {
        Self {
            min: (target / 8).max(64_000),
            max: target,
            current: target,
        }
    }

    pub fn current(&self) -> u32 {
        self.current
    }

    /// Feeds one report (`fraction_lost` in 0.0–1.0); returns the new bitrate when it
    /// changed enough to be worth telling the encoder.
    pub fn on_report(&mut self, fraction_lost: f64) -> Option<u32> {
        let loss = fraction_lost.clamp(0.0, 1.0);
        let next = if loss > 0.10 {
            f64::from(self.current) * (1.0 - 0.5 * loss)
        } else if loss < 0.02 {
            f64::from(self.current) * 1.08
        } else {
            f64::from(self.current)
        };
        let next = (next as u32).clamp(self.min, self.max);
        let changed = next.abs_diff(self.current) * 20 >= self.current.max(1);
        if changed || (next != self.current && (next == self.max || next == self.min)) {
            self.current = next;
            Some(next)
        } else {
            None
        }
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
}
