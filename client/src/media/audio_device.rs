//! cpal plumbing shared by the microphone and the speaker: listing devices, picking one,
//! choosing a stream format, and keeping a stream alive on its own thread.
//!
//! A `cpal::Stream` is not `Send` on every platform, while our sources and sinks must
//! be (they move into pipeline threads). So each stream is built and owned by a small
//! thread that only waits for the stop signal; the source/sink talks to the audio
//! callback through shared buffers. Dropping the [`StreamGuard`] stops the stream.
//! Every cpal call returns errors (no device, ALSA without a sound card, a device that
//! vanished) as `Err`, never a panic.

use super::device::{DeviceChoice, DeviceInfo};
use anyhow::{anyhow, bail, Context, Result};
use cpal::traits::{DeviceTrait, HostTrait};
use cpal::{SampleFormat, SampleRate, StreamConfig};
use std::sync::mpsc;
use std::time::Duration;

/// Capture or playback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Input,
    Output,
}

/// Lists the host's devices in one direction; an empty list when there are none or the
/// audio system is unavailable.
pub fn list(direction: Direction) -> Vec<DeviceInfo> {
    let host = cpal::default_host();
    let devices = match direction {
        Direction::Input => host.input_devices().map(|d| d.collect::<Vec<_>>()),
        Direction::Output => host.output_devices().map(|d| d.collect::<Vec<_>>()),
    };
    match devices {
        Ok(devices) => devices
            .iter()
            .enumerate()
            .map(|(index, d)| DeviceInfo {
                index,
                name: d.name().unwrap_or_else(|_| format!("device {index}")),
                description: String::new(),
            })
            .collect(),
        Err(e) => {
            tracing::debug!(?direction, error = %e, "cannot list audio devices");
            Vec::new()
        }
    }
}

/// Finds the device for a (non-synthetic) choice.
pub fn pick(direction: Direction, choice: &DeviceChoice) -> Result<cpal::Device> {
    let host = cpal::default_host();
    match choice {
        DeviceChoice::Synthetic => bail!("synthetic device requested"),
        DeviceChoice::Default => match direction {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        }
        .ok_or_else(|| anyhow!("no default {direction:?} device")),
        DeviceChoice::Device(i) => {
            let mut devices: Box<dyn Iterator<Item = cpal::Device>> = match direction {
                Direction::Input => Box::new(host.input_devices()?),
                Direction::Output => Box::new(host.output_devices()?),
            };
            devices
                .nth(*i)
                .ok_or_else(|| anyhow!("no {direction:?} device #{i}"))
        }
    }
}

/// Picks a stream format: 48 kHz mono if the device offers it, else 48 kHz with any
/// channel count, else the device default (we then mix and resample ourselves).
/// Integer or float samples are preferred over exotic formats.
pub fn choose_config(
    device: &cpal::Device,
    direction: Direction,
) -> Result<(StreamConfig, SampleFormat)> {
    const RATE: u32 = 48_000;
    let ranges: Vec<cpal::SupportedStreamConfigRange> = match direction {
        Direction::Input => device.supported_input_configs().map(|r| r.collect()),
        Direction::Output => device.supported_output_configs().map(|r| r.collect()),
    }
    .unwrap_or_default();
    let usable = |f: SampleFormat| matches!(f, SampleFormat::I16 | SampleFormat::F32);
    let has_rate = |r: &cpal::SupportedStreamConfigRange| {
        r.min_sample_rate().0 <= RATE && RATE <= r.max_sample_rate().0
    };
    let best = ranges
        .iter()
        .find(|r| r.channels() == 1 && has_rate(r) && usable(r.sample_format()))
        .or_else(|| {
            ranges
                .iter()
                .find(|r| has_rate(r) && usable(r.sample_format()))
        })
        .or_else(|| ranges.iter().find(|r| has_rate(r)));
    let supported = match best {
        Some(r) => (*r).with_sample_rate(SampleRate(RATE)),
        None => match direction {
            Direction::Input => device.default_input_config(),
            Direction::Output => device.default_output_config(),
        }
        .context("no usable stream format")?,
    };
    Ok((supported.config(), supported.sample_format()))
}

/// Keeps a stream alive on its owner thread; drop it to stop the stream.
pub struct StreamGuard {
    _stop: mpsc::Sender<()>,
}

/// Runs `build` on a new thread that then owns the returned stream until the guard is
/// dropped. Returns the build's error, or a timeout if the audio system hangs.
pub fn spawn_stream<F>(thread_name: &str, build: F) -> Result<StreamGuard>
where
    F: FnOnce() -> Result<cpal::Stream> + Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(thread_name.to_string())
        .spawn(move || match build() {
            Ok(stream) => {
                let _ = ready_tx.send(Ok(()));
                // Returns when the guard's sender is dropped.
                let _ = stop_rx.recv();
                drop(stream);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .context("spawning audio stream thread")?;
    match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok(StreamGuard { _stop: stop_tx }),
        Ok(Err(e)) => Err(e),
        Err(_) => bail!("audio device did not open within 5 s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_and_picking_never_panic() {
        let inputs = list(Direction::Input);
        let outputs = list(Direction::Output);
        tracing::debug!(?inputs, ?outputs);
        assert!(pick(Direction::Input, &DeviceChoice::Device(10_000)).is_err());
        assert!(pick(Direction::Output, &DeviceChoice::Synthetic).is_err());
    }
}
