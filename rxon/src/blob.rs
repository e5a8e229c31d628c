//! Object storage as rxon names it (`rxon/blob.py`).

use sha2::Digest;

/// rxon's `calculate_config_hash`: the first 16 hex digits of
/// `sha256("<endpoint>|<access key>|<bucket>")`, which a worker sends as
/// `capabilities.s3_config_hash` so an orchestrator can tell it uses
/// another store.
pub fn config_hash(endpoint: &str, access_key: &str, bucket: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{endpoint}|{access_key}|{bucket}").as_bytes());
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_config_hash_is_rxons() {
        // rxon.blob.calculate_config_hash("http://127.0.0.1:9000", "ak", "b")
        assert_eq!(
            super::config_hash("http://127.0.0.1:9000", "ak", "b"),
            "086fe5a0ec5eb906"
        );
    }
}
