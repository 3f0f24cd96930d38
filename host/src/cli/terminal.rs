//! Text a task wrote, made safe to print on an operator's terminal.
//!
//! A guest's log lines, error messages and request URLs are stored as the
//! guest wrote them (`sandbox/capture.rs` only drops NUL). Printed raw, an
//! escape sequence in them would run in the terminal of whoever inspects
//! the job: OSC 52 writes the clipboard, CSI sequences move the cursor and
//! rewrite what is already on screen, and bidirectional overrides reorder
//! what is shown. `--json` output needs none of this: JSON escapes control
//! characters, and a program reads it.

use std::borrow::Cow;

/// `text` with every control character but newline and tab, and every
/// bidirectional override or isolate, written as a Rust escape
/// (`\u{1b}`).
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            escaped.extend(c.escape_unicode());
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
