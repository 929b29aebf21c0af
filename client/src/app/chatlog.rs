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

/// The session machine's line when a call could not connect (kept across a rematch).
const GAVE_UP_PREFIX: &str = "Couldn't connect to this stranger";

/// Old calls scroll away; this keeps memory bounded in a long session.
const MAX_LINES: usize = 2000;

impl ChatLog {
    pub fn clear(&mut self) {
        self.lines.clear();
    }

    /// Starts the transcript of a new call. A give-up line of the call before ("Couldn't
    /// connect to this stranger …") stays on top: a quick rematch would otherwise wipe it
    /// before anyone could read why the last call ended.
    pub fn new_call(&mut self) {
        let carried = self
            .lines
            .last()
            .filter(|l| l.speaker == Speaker::System && l.text.starts_with(GAVE_UP_PREFIX))
            .cloned();
        self.lines.clear();
        self.lines.extend(carried);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_call_keeps_only_the_give_up_line_of_the_last() {
        let mut log = ChatLog::default();
        log.apply(&Notice::System(
            "You're now chatting with a stranger.".into(),
        ));
        log.apply(&Notice::Chat {
            from_me: false,
            text: "hi".into(),
        });
        log.apply(&Notice::System(
            "Couldn't connect to this stranger — finding someone new.".into(),
        ));
        log.new_call();
        assert_eq!(log.lines.len(), 1);
        assert!(log.lines[0].text.starts_with("Couldn't connect"));
        log.apply(&Notice::Chat {
            from_me: true,
            text: "hello".into(),
        });
        log.new_call();
        assert!(
            log.lines.is_empty(),
            "an ordinary call leaves nothing behind"
        );
    }
}
