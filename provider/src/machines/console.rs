//! The guest's serial console, `console.log` in the machine's directory: its last lines, which
//! errors quote (a panic, a guest that never answered SSH, firmware that found nothing to boot).

use std::path::Path;

pub const LOG: &str = "console.log";

/// The last `n` non-empty lines of the console, without terminal escape sequences (firmware
/// draws its menus with them) or other control characters; None when there are none.
pub fn tail(dir: &Path, n: usize) -> Option<String> {
    let bytes = std::fs::read(dir.join(LOG)).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text.lines().map(printable).filter(|l| !l.is_empty()).collect();
    (!lines.is_empty()).then(|| lines[lines.len().saturating_sub(n)..].join("\n"))
}

/// `line` without ANSI escape sequences (ESC [ parameters final-byte) and control characters.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.clone().next() == Some('[') {
                chars.next();
                // Parameters and intermediates, up to the final byte (@ to ~).
                for p in chars.by_ref() {
                    if ('@'..='~').contains(&p) {
                        break;
                    }
                }
            }
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_quotes_the_last_lines_as_text() {
        let dir = std::env::temp_dir().join(format!("xhyve-console-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(tail(&dir, 3), None);
        let early: String = (0..30).map(|i| format!("line {i}\r\n")).collect();
        let menu = "\u{1b}[2J\u{1b}[01;01H\u{1b}[0m\u{1b}[35m\u{1b}[40mBdsDxe: No bootable option or device was found.\u{7}\r\n\r\n";
        std::fs::write(dir.join(LOG), early + menu).unwrap();
        assert_eq!(tail(&dir, 2).unwrap(), "line 29\nBdsDxe: No bootable option or device was found.");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
