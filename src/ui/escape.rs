//! Text from hosts made safe for a terminal. Every control character but
//! tab (escape sequences, bell, backspace, the C1 controls) is shown as a
//! `\x1b`-style escape instead of reaching the terminal, so a host's output
//! cannot move the cursor, clear the screen, retitle the window or hide a
//! line. Newlines and carriage returns are the line splitter's business
//! ([`super::prefixed`]), not this module's.

use std::borrow::Cow;

/// `s` with each control character but tab written as `\xNN`.
pub(crate) fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() && c != '\t'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_but_tab_are_escaped() {
        assert_eq!(escape_controls("plain\ttext"), "plain\ttext");
        assert!(matches!(escape_controls("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("\u{1b}]0;pwned\u{7}\u{1b}[2Jx\u{8}\u{7f}\u{9b}"),
            "\\x1b]0;pwned\\x07\\x1b[2Jx\\x08\\x7f\\x9b"
        );
    }
}
