//! The one stable hash of the crate.

/// 64-bit FNV-1a of `bytes`. Stable across Rust versions, platforms and runs, unlike
/// `std::collections::hash_map::DefaultHasher`, whose algorithm may change: use it wherever a
/// hash is stored or seeds something reproducible (cache fingerprints, per-document split
/// offsets, random streams derived from a seed).
pub(crate) fn stable_hash(bytes: impl AsRef<[u8]>) -> u64 {
    bytes.as_ref().iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::stable_hash;

    #[test]
    fn matches_the_published_fnv1a_values() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash("foobar"), 0x8594_4171_f739_67e8);
    }
}
