//! A real camera through nokhwa (V4L2 on Linux, Media Foundation on Windows,
//! AVFoundation on macOS), converted to I420 at the size the encoder expects.
//!
//! nokhwa decodes whatever the camera sends (MJPEG, YUYV, NV12) to RGB for us; we then
//! scale (nearest neighbour, only when the camera settled on another size) and convert
//! to I420 in one pass (see [`crate::media::convert`]). With no camera, `query`
//! returns an empty list and opening returns an error — both handled, never a panic.

use super::VideoSource;
use crate::media::clock::now_us;
use crate::media::convert::rgb_to_i420;
use crate::media::device::DeviceInfo;
use crate::media::frame::VideoFrame;
use anyhow::{anyhow, bail, Context, Result};
use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{
    CameraFormat, CameraIndex, CameraInfo, FrameFormat, RequestedFormat, RequestedFormatType,
    Resolution,
};
use nokhwa::Camera;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// On macOS the camera needs the user's permission before anything else; elsewhere a
/// no-op.
fn init_backend() {
    #[cfg(target_os = "macos")]
    {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            nokhwa::nokhwa_initialize(|granted| tracing::info!(granted, "camera permission"));
        });
    }
}

/// What the native backend reports (empty when none or the backend is missing).
fn query_native() -> Vec<CameraInfo> {
    init_backend();
    let Some(backend) = nokhwa::native_api_backend() else {
        return Vec::new();
    };
    nokhwa::query(backend).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "cannot list cameras");
        Vec::new()
    })
}

/// Cameras present now, in the order `open` indexes them.
pub fn list() -> Vec<DeviceInfo> {
    query_native()
        .iter()
        .enumerate()
        .map(|(index, c)| DeviceInfo {
            index,
            name: c.human_name(),
            description: c.description().to_string(),
        })
        .collect()
}

/// An open camera delivering I420 frames of a fixed size.
///
/// nokhwa's `Camera` is only `Send` with its `output-threaded` feature, so it lives on
/// its own thread (which also keeps conversion off the pipeline thread); frames come
/// over a one-slot channel, and a frame the pipeline had no time for is dropped there
/// rather than queued.
pub struct CameraSource {
    name: String,
    rx: Receiver<Result<VideoFrame>>,
    stop: Arc<AtomicBool>,
}

impl CameraSource {
    /// Opens camera `index` (position in [`list`]) asking for about `width`×`height` at
    /// `fps`, and waits for its first frame so a camera that opens but never delivers
    /// counts as a failure.
    pub fn open(index: usize, width: u32, height: u32, fps: u32) -> Result<Self> {
        let (width, height) = (width & !1, height & !1);
        if width == 0 || height == 0 {
            bail!("camera size must be at least 2x2");
        }
        let cams = query_native();
        let info = cams
            .get(index)
            .ok_or_else(|| anyhow!("no camera #{index} ({} found)", cams.len()))?;
        // The backend's own index for this camera (V4L device numbers may have gaps).
        let cam_index = info.index().clone();
        let name = info.human_name();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::sync_channel::<Result<VideoFrame>>(1);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let thread_stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("camera".into())
            .spawn(move || {
                let mut grabber = match Grabber::open(cam_index, width, height, fps) {
                    Ok(g) => g,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while !thread_stop.load(Ordering::Relaxed) {
                    let frame = grabber.grab();
                    let failed = frame.is_err();
                    match tx.try_send(frame) {
                        Ok(()) | Err(TrySendError::Full(_)) => {}
                        Err(TrySendError::Disconnected(_)) => break,
                    }
                    if failed {
                        // Do not spin on a camera that keeps failing.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .context("spawning camera thread")?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("camera #{index} did not open within 10 s"))??;
        let src = Self { name, rx, stop };
        // The first frame proves the camera really works.
        match src.rx.recv_timeout(Duration::from_secs(3)) {
            Ok(Ok(_)) => Ok(src),
            Ok(Err(e)) => Err(e.context("camera opened but its first frame failed")),
            Err(_) => bail!("camera opened but delivered no frame within 3 s"),
        }
    }
}

impl VideoSource for CameraSource {
    fn next_frame(&mut self) -> Result<VideoFrame> {
        // The camera paces delivery; this blocks until its next frame.
        match self.rx.recv_timeout(Duration::from_secs(2)) {
            Ok(frame) => frame,
            Err(RecvTimeoutError::Timeout) => {
                bail!("camera {} delivered no frame for 2 s", self.name)
            }
            Err(RecvTimeoutError::Disconnected) => bail!("camera {} stopped", self.name),
        }
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn is_synthetic(&self) -> bool {
        false
    }
}

impl Drop for CameraSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The camera itself, owned by the camera thread.
struct Grabber {
    cam: Camera,
    width: u32,
    height: u32,
    seq: u64,
    rgb: Vec<u8>,
}

impl Grabber {
    fn open(cam_index: CameraIndex, width: u32, height: u32, fps: u32) -> Result<Self> {
        let wanted = Resolution::new(width, height);
        let attempts = [
            RequestedFormatType::Closest(CameraFormat::new(wanted, FrameFormat::MJPEG, fps)),
            RequestedFormatType::Closest(CameraFormat::new(wanted, FrameFormat::YUYV, fps)),
            RequestedFormatType::HighestResolution(wanted),
            RequestedFormatType::None,
        ];
        let mut last_err = anyhow!("camera did not open");
        for req in attempts {
            match Camera::new(cam_index.clone(), RequestedFormat::new::<RgbFormat>(req)) {
                Ok(mut cam) => match cam.open_stream() {
                    Ok(()) => {
                        tracing::info!(format = %cam.camera_format(), "camera streaming");
                        return Ok(Self {
                            cam,
                            width,
                            height,
                            seq: 0,
                            rgb: Vec::new(),
                        });
                    }
                    Err(e) => last_err = anyhow!("open_stream: {e}"),
                },
                Err(e) => last_err = anyhow!("{e}"),
            }
        }
        Err(last_err)
    }

    /// Blocks for the camera's next frame and converts it.
    fn grab(&mut self) -> Result<VideoFrame> {
        let buf = self.cam.frame().map_err(|e| anyhow!("camera frame: {e}"))?;
        let capture_us = now_us();
        let res = buf.resolution();
        let (sw, sh) = (res.width(), res.height());
        self.rgb.resize((sw * sh * 3) as usize, 0);
        buf.decode_image_to_buffer::<RgbFormat>(&mut self.rgb)
            .map_err(|e| anyhow!("camera decode: {e}"))?;
        let data = rgb_to_i420(&self.rgb, sw, sh, self.width, self.height)
            .ok_or_else(|| anyhow!("camera gave an empty {sw}x{sh} frame"))?;
        let frame = VideoFrame {
            width: self.width,
            height: self.height,
            data,
            capture_us,
            seq: self.seq,
        };
        self.seq += 1;
        Ok(frame)
    }
}

impl Drop for Grabber {
    fn drop(&mut self) {
        if let Err(e) = self.cam.stop_stream() {
            tracing::debug!(error = %e, "stopping camera stream");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_camera_is_an_error_not_a_panic() {
        assert!(CameraSource::open(10_000, 640, 480, 30).is_err());
        assert!(CameraSource::open(0, 0, 0, 30).is_err());
    }
}
