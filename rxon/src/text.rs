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

/// The first at most `cap` bytes of `value` as JSON, and whether that is
/// all of it; the serializer is stopped once past `cap` (the rest of the
/// value is neither serialized nor copied).
fn json_prefix<T: serde::Serialize + ?Sized>(value: &T, cap: usize) -> (Vec<u8>, bool) {
    /// Keeps the first bytes, then stops the serializer with an error.
    struct Prefix(Vec<u8>, usize);
    impl std::io::Write for Prefix {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let room = self.1 - self.0.len();
            self.0.extend_from_slice(&buf[..buf.len().min(room)]);
            if buf.len() > room {
                return Err(std::io::Error::other("over the cap"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Prefix(Vec::with_capacity(cap.min(4096)), cap);
    let complete = serde_json::to_writer(&mut out, value).is_ok();
    (out.0, complete)
}

/// `value` as JSON if that takes at most `cap` bytes; `None` (having
/// written no more than `cap` bytes) when it is larger.
pub fn json_capped<T: serde::Serialize + ?Sized>(value: &T, cap: usize) -> Option<Vec<u8>> {
    let (text, complete) = json_prefix(value, cap);
    complete.then_some(text)
}

/// A value as JSON for an INFO line: at most [`PREVIEW`] bytes, written
/// without serializing (or copying) the rest of the value.
pub fn json_preview<T: serde::Serialize + ?Sized>(value: &T) -> String {
    let (bytes, complete) = json_prefix(value, PREVIEW + 4);
    let text = String::from_utf8_lossy(&bytes);
    if complete && text.len() <= PREVIEW {
        return text.into_owned();
    }
    let mut end = PREVIEW.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut)", &text[..end])
}

/// Peer text for a log line: [`clip`] at [`MAX_LOGGED_TEXT`].
pub fn for_log(s: &str) -> Cow<'_, str> {
    clip(s, MAX_LOGGED_TEXT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_capped_gives_the_whole_text_or_nothing() {
        let v = serde_json::json!({"a": "x".repeat(100)});
        let text = serde_json::to_vec(&v).unwrap();
        assert_eq!(json_capped(&v, text.len()), Some(text.clone()));
        assert_eq!(json_capped(&v, text.len() - 1), None);
        assert_eq!(json_capped(&v, 0), None);
    }

    #[test]
    fn clip_cuts_on_a_char_boundary_and_says_how_much() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("ééé", 3), "é… (4 more bytes cut)");
    }

    #[test]
    fn json_preview_stops_after_the_preview() {
        assert_eq!(json_preview(&serde_json::json!({"a": 1})), r#"{"a":1}"#);
        let big = serde_json::json!({"blob": "x".repeat(10_000)});
        let p = json_preview(&big);
        assert!(
            p.starts_with(r#"{"blob":"xxx"#) && p.ends_with("… (cut)"),
            "{p}"
        );
        assert!(p.len() <= PREVIEW + 12, "{}", p.len());
    }
}
