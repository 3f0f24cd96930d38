//! Text a task wrote, made safe to print on an operator's terminal.
//!
//! A guest's log lines, error messages and request URLs are stored as the
//! guest wrote them (`sandbox/capture.rs` only drops NUL). Printed raw, an
//! escape sequence in them would run in the terminal of whoever inspects
//! the job: OSC 52 writes the clipboard, CSI sequences move the cursor and
//! rewrite what is already on screen, and bidirectional overrides reorder
//! what is shown. `--json` output is JSON, which escapes C0 controls but not
//! C1 ones (U+009B is a CSI to some terminals) nor bidi overrides:
//! [`printable_json`] escapes those too, as JSON does (`\u009b`).

use std::borrow::Cow;

/// `text` with every control character but newline and tab, and every
/// bidirectional override or isolate, written as a Rust escape
/// (`\u{1b}`).
pub fn printable(text: &str) -> Cow<'_, str> {
    escape_unsafe(text, |c| c.escape_unicode().to_string())
}

/// Serialized JSON with every character [`printable`] escapes written as
/// a JSON escape (`\u009b`): still the same JSON, since such characters
/// can only occur inside its strings.
pub fn printable_json(json: &str) -> Cow<'_, str> {
    escape_unsafe(json, |c| format!("\\u{:04x}", u32::from(c)))
}

/// `text` with each character [`is_unsafe`] says is unsafe replaced by
/// `escape` of it; borrowed when there is none.
fn escape_unsafe(text: &str, escape: fn(char) -> String) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            escaped.push_str(&escape(c));
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_its_value_and_loses_its_controls() {
        let value = serde_json::json!({"output": "a\u{9b}31m\u{202e}b\u{1b}"});
        let json = serde_json::to_string(&value).unwrap();
        let shown = printable_json(&json);
        assert!(!shown.chars().any(is_unsafe), "{shown}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&shown).unwrap(),
            value
        );
    }

    #[test]
    fn plain_text_is_borrowed_and_controls_are_escaped() {
        assert!(matches!(
            printable("café\tok\n"),
            Cow::Borrowed("café\tok\n")
        ));
        assert_eq!(
            printable("a\u{1b}[2J\u{9b}\u{7f}\u{2067}b\r"),
            r"a\u{1b}[2J\u{9b}\u{7f}\u{2067}b\u{d}"
        );
    }
}
