//! Host errors as users read them: the OS's message without Rust's " (os error N)".

/// "No such file or directory (os error 2)" -> "No such file or directory".
pub fn strip_os_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
