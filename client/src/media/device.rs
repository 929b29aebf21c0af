//! How the user (or a command-line flag) picks a device, and how devices are listed.

/// Which device to open. `Synthetic` forces the stand-in (test pattern, tone, null
/// sink); the others try a real device and fall back to the stand-in if it is missing
/// or fails to open.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    Synthetic,
    /// The system's default device.
    #[default]
    Default,
    /// The device at this position in the matching `list_*` result.
    Device(usize),
}

/// Choice of camera.
pub type VideoChoice = DeviceChoice;
/// Choice of microphone.
pub type AudioChoice = DeviceChoice;
/// Choice of speaker. `Null` plays nothing (see [`super::playback::NullSink`]); the
/// others fall back to it when the device is missing or fails.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SinkChoice {
    Null,
    #[default]
    Default,
    /// The device at this position in `list_speakers()`.
    Device(usize),
}

impl SinkChoice {
    /// The same device expressed as a [`DeviceChoice`] (`Null` ↦ `Synthetic`).
    pub fn as_device_choice(&self) -> DeviceChoice {
        match self {
            Self::Null => DeviceChoice::Synthetic,
            Self::Default => DeviceChoice::Default,
            Self::Device(i) => DeviceChoice::Device(*i),
        }
    }
}

/// One entry of a device list, for the settings screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Pass as `DeviceChoice::Device(index)`.
    pub index: usize,
    pub name: String,
    /// Backend-specific details (driver, bus); may be empty.
    pub description: String,
}
