//! Random bytes from the kernel's CSPRNG (ids, MACs without a UUID, the guest's RNG device and
//! boot seed). Failure is an error, never a weak fallback.

/// Fills `buf`; retries interrupted calls.
pub fn fill(buf: &mut [u8]) -> Result<(), String> {
    getrandom::fill(buf).map_err(|e| format!("getrandom: {e}"))
}

/// `N` random bytes.
pub fn bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    fill(&mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn differs_between_calls() {
        let a: [u8; 16] = super::bytes().unwrap();
        let b: [u8; 16] = super::bytes().unwrap();
        assert_ne!(a, b);
    }
}
