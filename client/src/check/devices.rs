//! The device step of the setup check: which camera, microphone and speaker a call would
//! use, named through the same enumeration as the home screen's pickers (nokhwa for
//! cameras, cpal for audio). Blocking (listing can take a moment); run it off the
//! async threads.

use crate::media::audio_device::{self, Direction};
use crate::media::capture::{list_cameras, list_microphones, list_speakers, DeviceInfo};
use crate::media::device::DeviceChoice;
use cpal::traits::DeviceTrait;

/// The user's picks (indices into the `list_*` results; `None` = system default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceChoices {
    pub camera: Option<usize>,
    pub microphone: Option<usize>,
    pub speaker: Option<usize>,
}

/// Device names, `None` when there is no such device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceReport {
    pub camera: Option<String>,
    pub microphone: Option<String>,
    pub speaker: Option<String>,
}

/// The name of the device a call would open: the picked one if it still exists, else
/// the system default if the list has it, else the first one; `None` for an empty list.
pub fn choose(
    list: &[DeviceInfo],
    picked: Option<usize>,
    default_name: Option<String>,
) -> Option<String> {
    if let Some(d) = picked.and_then(|i| list.iter().find(|d| d.index == i)) {
        return Some(d.name.clone());
    }
    if let Some(name) = default_name.filter(|n| list.iter().any(|d| &d.name == n)) {
        return Some(name);
    }
    list.first().map(|d| d.name.clone())
}

fn default_audio_name(direction: Direction) -> Option<String> {
    audio_device::pick(direction, &DeviceChoice::Default)
        .ok()
        .and_then(|d| d.name().ok())
}

/// Lists the devices (blocking).
pub fn find(choices: &DeviceChoices) -> DeviceReport {
    let cameras = list_cameras();
    let microphones = list_microphones();
    let speakers = list_speakers();
    let report = DeviceReport {
        // Camera "default" is the first one, as when a call opens it.
        camera: choose(&cameras, choices.camera, None),
        microphone: choose(
            &microphones,
            choices.microphone,
            (!microphones.is_empty())
                .then(|| default_audio_name(Direction::Input))
                .flatten(),
        ),
        speaker: choose(
            &speakers,
            choices.speaker,
            (!speakers.is_empty())
                .then(|| default_audio_name(Direction::Output))
                .flatten(),
        ),
    };
    tracing::debug!(
        ?cameras,
        ?microphones,
        ?speakers,
        ?report,
        "setup check devices"
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(index: usize, name: &str) -> DeviceInfo {
        DeviceInfo {
            index,
            name: name.into(),
            description: String::new(),
        }
    }

    #[test]
    fn picks_the_chosen_then_the_default_then_the_first() {
        let list = [dev(0, "hw:0"), dev(1, "USB mic"), dev(2, "default")];
        assert_eq!(
            choose(&list, Some(1), Some("default".into())),
            Some("USB mic".into())
        );
        assert_eq!(
            choose(&list, Some(9), Some("default".into())),
            Some("default".into())
        );
        assert_eq!(
            choose(&list, None, Some("elsewhere".into())),
            Some("hw:0".into())
        );
        assert_eq!(choose(&[], Some(0), Some("default".into())), None);
    }

    #[test]
    fn finding_devices_never_panics() {
        let r = find(&DeviceChoices::default());
        if list_cameras().is_empty() {
            assert_eq!(r.camera, None);
        }
        if list_microphones().is_empty() {
            assert_eq!(r.microphone, None);
        }
    }
}
