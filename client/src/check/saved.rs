//! Reads the desktop app's saved settings without opening a window, for
//! `peer-stream --check` without `--server`. eframe keeps them in `app.ron` under its
//! storage folder (`~/.local/share/peer-stream/` on Linux; `XDG_DATA_HOME` moves it):
//! a RON map from key to a RON string, our settings under [`STORAGE_KEY`].

use crate::app::settings::{Settings, STORAGE_KEY};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The app id the window is opened with (its storage folder's name).
pub const APP_ID: &str = "peer-stream";

/// Where eframe keeps the app's state (`None` when the OS has no such folder).
pub fn storage_dir() -> Option<PathBuf> {
    eframe::storage_dir(APP_ID)
}

/// The settings in `file` (eframe's `app.ron`); `None` when it is missing or unreadable.
pub fn read_settings(file: &Path) -> Option<Settings> {
    let text = std::fs::read_to_string(file).ok()?;
    parse_settings(&text)
}

/// The settings inside the text of an `app.ron`.
pub fn parse_settings(text: &str) -> Option<Settings> {
    let kv: HashMap<String, String> = match ron::from_str(text) {
        Ok(kv) => kv,
        Err(e) => {
            tracing::debug!("unreadable app.ron: {e}");
            return None;
        }
    };
    let value = kv.get(STORAGE_KEY)?;
    match ron::from_str(value) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!("unreadable saved settings: {e}");
            None
        }
    }
}

/// The settings the app saved last, if any.
pub fn load() -> Option<Settings> {
    read_settings(&storage_dir()?.join("app.ron"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_eframe_writes() {
        let settings = Settings {
            server_url: "wss://chat.example.org/ws".into(),
            microphone: Some(2),
            ..Default::default()
        };
        // eframe::set_value stores `ron::ser::to_string(value)` under the key, and the
        // file is the pretty-printed map of those strings.
        let inner = ron::ser::to_string(&settings).expect("ron");
        let mut kv = HashMap::new();
        kv.insert(STORAGE_KEY.to_owned(), inner);
        kv.insert("egui".to_owned(), "(zoom_factor: 1.0)".to_owned());
        let file =
            ron::ser::to_string_pretty(&kv, ron::ser::PrettyConfig::default()).expect("ron file");
        assert_eq!(parse_settings(&file), Some(settings));
        assert_eq!(parse_settings("{}"), None);
        assert_eq!(parse_settings("not ron at all"), None);
    }
}
