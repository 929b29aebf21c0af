//! The chat transcript the call screen shows, built from engine events. It outlives a
//! call, so the conversation stays readable after the stranger leaves.

use crate::session::machine::Notice;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Speaker {
    Me,
    Stranger,
    System,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatLine {
    pub speaker: Speaker,
    pub text: String,
}

#[derive(Default, Debug)]
pub struct ChatLog {
    pub lines: Vec<ChatLine>,
}

/// Old calls scroll away; this keeps memory bounded in a long session.
const MAX_LINES: usize = 2000;

impl ChatLog {
    pub fn clear(&mut self) {
        self.lines.clear();
    }

    fn push(&mut self, speaker: Speaker, text: impl Into<String>) {
        self.lines.push(ChatLine {
            speaker,
            text: text.into(),
        });
        if self.lines.len() > MAX_LINES {
            let excess = self.lines.len() - MAX_LINES;
            self.lines.drain(..excess);
        }
    }

    /// Applies a notice; returns true when a new call began (the UI clears the log).
    pub fn apply(&mut self, notice: &Notice) -> bool {
        match notice {
            Notice::Matched { .. } => return true,
            Notice::Chat { from_me, text } => self.push(
                if *from_me {
                    Speaker::Me
                } else {
                    Speaker::Stranger
                },
                text.clone(),
            ),
            Notice::System(text) => self.push(Speaker::System, text.clone()),
            Notice::Error { message, .. } => self.push(Speaker::Error, message.clone()),
            Notice::StrangerTyping(_) | Notice::Counts { .. } => {}
        }
        false
    }
}
