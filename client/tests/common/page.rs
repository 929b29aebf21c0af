//! One page API over both browser drivers, so a scenario is written once and runs in
//! Chromium (`cdp.rs`, the Chrome DevTools Protocol) and in Firefox (`bidi.rs`, WebDriver
//! BiDi): a driver supplies evaluation, typing, keys, screenshots and closing; waiting,
//! clicking, visibility, chat and media checks are built on evaluation here.

#![allow(clippy::print_stderr)]

use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Keys a scenario presses.
#[derive(Clone, Copy, Debug)]
pub enum Key {
    Enter,
    Escape,
}

/// What a failure report shows of a page.
pub const SNAPSHOT: &str = super::cdp::SNAPSHOT;

// Only awaited in place (never spawned), so the futures need not be Send.
#[allow(async_fn_in_trait)]
pub trait WebPage {
    fn name(&self) -> &str;

    /// What every page of this browser logged, for failure reports.
    fn console_dump(&self) -> String;

    /// Evaluates `expr` in the page (awaiting a promise) and returns its value as JSON;
    /// with `user`, as if the user had just clicked (user activation: autoplay with
    /// sound is allowed afterwards, as after a real click).
    async fn try_eval_as(&self, expr: &str, user: bool) -> Result<Value, String>;

    /// Evaluates `expr` without user activation (a page nobody has clicked yet).
    async fn try_eval(&self, expr: &str) -> Result<Value, String> {
        self.try_eval_as(expr, false).await
    }

    /// Types `text` into the focused element, key by key, as the user would.
    async fn type_text(&self, text: &str);

    /// Presses and releases a key (a trusted key event) on the focused element.
    async fn press(&self, key: Key);

    async fn screenshot(&self, path: &Path);

    /// Closes the page (its WebSocket goes with it).
    async fn close(&self);

    async fn eval(&self, expr: &str) -> Value {
        self.try_eval(expr).await.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn snapshot(&self) -> String {
        match self.try_eval(SNAPSHOT).await {
            Ok(v) => v.to_string(),
            Err(e) => e,
        }
    }

    /// Polls `expr` until it is truthy and returns its value; fails with the page's
    /// state and console after `limit`.
    async fn wait_for(&self, what: &str, expr: &str, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let last = self.try_eval(expr).await;
            if let Ok(v) = &last {
                let truthy = !matches!(v, Value::Null | Value::Bool(false))
                    && v.as_f64() != Some(0.0)
                    && v.as_str() != Some("");
                if truthy {
                    return v.clone();
                }
            }
            if start.elapsed() > limit {
                panic!(
                    "{}: timed out after {limit:?} waiting for {what} (last: {last:?})\n\
                     page: {}\nconsole:\n{}",
                    self.name(),
                    self.snapshot().await,
                    self.console_dump()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Clicks a real element through its own click handler, as the user would.
    async fn click(&self, selector: &str) {
        let clicked = self
            .try_eval_as(
                &format!(
                    "(() => {{ const e = document.querySelector({sel}); if (!e || e.disabled || e.closest('[hidden]')) return false; e.click(); return true; }})()",
                    sel = json!(selector)
                ),
                true,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            clicked,
            json!(true),
            "{}: {selector} is missing, hidden or disabled; page: {}",
            self.name(),
            self.snapshot().await
        );
    }

    async fn visible(&self, id: &str) -> bool {
        self.eval(&format!(
            "(() => {{ const e = document.getElementById({id}); return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0; }})()",
            id = json!(id)
        ))
        .await
            == json!(true)
    }

    async fn chat(&self) -> Vec<String> {
        serde_json::from_value(self.eval("peerStream.chat").await).unwrap()
    }

    /// Waits until the page decoded more than `frames` video frames and received more
    /// than `packets` audio packets; returns the page's `stats()`.
    async fn wait_for_media_counts(&self, frames: u64, packets: u64, limit: Duration) -> Value {
        self.wait_for(
            &format!("more than {frames} decoded video frames and {packets} audio packets"),
            &format!(
                "(async () => {{ const s = await peerStream.stats(); \
                 return s && s.framesDecoded > {frames} && s.audioPacketsReceived > {packets} ? s : null; }})()"
            ),
            limit,
        )
        .await
    }

    /// Waits until the page decoded more than `frames` video frames and received audio.
    async fn wait_for_media(&self, frames: u64, limit: Duration) -> Value {
        self.wait_for_media_counts(frames, 0, limit).await
    }
}

impl WebPage for super::cdp::Page<'_> {
    fn name(&self) -> &str {
        self.name
    }

    fn console_dump(&self) -> String {
        self.cdp.console_dump()
    }

    async fn try_eval_as(&self, expr: &str, user: bool) -> Result<Value, String> {
        let r = self
            .cdp
            .call(
                Some(&self.session),
                "Runtime.evaluate",
                json!({ "expression": expr, "awaitPromise": true, "returnByValue": true,
                    "userGesture": user }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!(
                "{}: `{expr}` threw: {}",
                self.name,
                ex["exception"]["description"]
                    .as_str()
                    .unwrap_or(&ex.to_string())
            ));
        }
        Ok(r["result"]["value"].clone())
    }

    async fn type_text(&self, text: &str) {
        self.cmd("Page.bringToFront", json!({})).await;
        self.cmd("Input.insertText", json!({ "text": text })).await;
    }

    async fn press(&self, key: Key) {
        let (name, code) = match key {
            Key::Enter => ("Enter", 13),
            Key::Escape => ("Escape", 27),
        };
        self.cmd("Page.bringToFront", json!({})).await;
        let mut down = json!({ "type": "keyDown", "key": name, "code": name,
            "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code });
        if matches!(key, Key::Enter) {
            down["text"] = json!("\r");
        }
        self.cmd("Input.dispatchKeyEvent", down).await;
        self.cmd(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyUp", "key": name, "code": name,
                "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code }),
        )
        .await;
    }

    async fn screenshot(&self, path: &Path) {
        super::cdp::Page::screenshot(self, path).await;
    }

    async fn close(&self) {
        let _ = self
            .cdp
            .call(Some(&self.session), "Page.close", json!({}))
            .await;
    }
}
