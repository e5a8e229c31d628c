//! Text a peer supplies (a plugin's message, a worker's status), made safe
//! for log lines and error messages: cut to a bound, saying how much was cut.

use std::borrow::Cow;

/// Longest peer-supplied text put in one log line or error message.
pub const MAX_LOGGED_TEXT: usize = 2048;

/// `s` cut to at most `max` bytes (on a character boundary), saying how much
/// was cut.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} more bytes cut)", &s[..end], s.len() - end))
}

/// Longest preview of job data (params, results) in an INFO line; the whole
/// value is logged at DEBUG only.
pub const PREVIEW: usize = 256;

/// Job data for an INFO line: [`clip`] at [`PREVIEW`].
pub fn preview(s: &str) -> Cow<'_, str> {
    clip(s, PREVIEW)
}

/// Peer text for a log line: [`clip`] at [`MAX_LOGGED_TEXT`].
pub fn for_log(s: &str) -> Cow<'_, str> {
    clip(s, MAX_LOGGED_TEXT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_on_a_char_boundary_and_says_how_much() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("ééé", 3), "é… (4 more bytes cut)");
    }
}
