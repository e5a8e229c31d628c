//! Message signatures: `hex(HMAC-SHA256(key = token, msg = canonical JSON))`.
//!
//! The canonical form follows rxon 1.0b17 (`rxon/security.py`, `rxon/utils.py`):
//! nulls are dropped from objects at every depth, integral floats become
//! integers, the top-level `security` and `_signature` keys (and any extra keys
//! the caller names, e.g. `bubbling_chain` for events) are removed, and the
//! result is written with keys sorted at every depth, compact separators and raw
//! UTF-8.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Top-level keys never covered by a message signature.
const UNSIGNED_KEYS: &[&str] = &["security", "_signature"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("Missing required security context")]
    MissingSecurity,
    #[error("Missing required cryptographic signature")]
    MissingSignature,
    #[error("Invalid message signature")]
    BadSignature,
    #[error("signed message must be a JSON object")]
    NotAnObject,
}

/// The canonical text of `message` without the top-level `exclude` keys (and
/// the always-excluded `security`/`_signature`).
pub fn canonical_json(message: &Value, exclude: &[&str]) -> String {
    let mut out = Vec::new();
    write_canonical(message, &mut out, Some(exclude));
    // Written from `&str`s and serde_json's output: always UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// Writes the canonical form of `value` to `out` without copying it: keys
/// sorted (by UTF-8 bytes, i.e. by code point, as Python sorts them), nulls
/// dropped from objects, integral floats as integers, compact separators.
/// `top`: at the top level, the keys to leave out besides [`UNSIGNED_KEYS`].
fn write_canonical(value: &Value, out: &mut impl std::io::Write, top: Option<&[&str]>) {
    // Writing to a Vec or a MAC cannot fail, nor can serializing a string
    // or a number (serde_json numbers are always finite).
    let _ = match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map
                .iter()
                .filter(|(k, v)| {
                    !v.is_null()
                        && top.is_none_or(|exclude| {
                            !UNSIGNED_KEYS.contains(&k.as_str()) && !exclude.contains(&k.as_str())
                        })
                })
                .map(|(k, _)| k)
                .collect();
            keys.sort_unstable();
            let _ = out.write_all(b"{");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    let _ = out.write_all(b",");
                }
                let _ = serde_json::to_writer(&mut *out, k);
                let _ = out.write_all(b":");
                write_canonical(&map[k], out, None);
            }
            out.write_all(b"}")
        }
        Value::Array(items) => {
            let _ = out.write_all(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    let _ = out.write_all(b",");
                }
                write_canonical(item, out, None);
            }
            out.write_all(b"]")
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                serde_json::to_writer(&mut *out, &(f as i64)).map_err(Into::into)
            }
            _ => serde_json::to_writer(&mut *out, n).map_err(Into::into),
        },
        other => serde_json::to_writer(&mut *out, other).map_err(Into::into),
    };
}

/// An HMAC-SHA256 the canonical form is written straight into.
struct MacWriter(HmacSha256);

impl MacWriter {
    fn new(secret: &str) -> Self {
        // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
        match HmacSha256::new_from_slice(secret.as_bytes()) {
            Ok(mac) => Self(mac),
            Err(_) => unreachable!("HMAC takes keys of any size"),
        }
    }

    /// The MAC of `message`'s canonical form (see [`canonical_json`]).
    fn of(message: &Value, secret: &str, exclude: &[&str]) -> HmacSha256 {
        let mut mac = Self::new(secret);
        write_canonical(message, &mut mac, Some(exclude));
        mac.0
    }
}

impl std::io::Write for MacWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Lowercase hex HMAC-SHA256 of the canonical form of `message`.
pub fn sign_message(message: &Value, secret: &str, exclude: &[&str]) -> String {
    hex::encode(
        MacWriter::of(message, secret, exclude)
            .finalize()
            .into_bytes(),
    )
}

/// Checks `message.security.signature` against `secret` in constant time.
pub fn verify_message(message: &Value, secret: &str, exclude: &[&str]) -> Result<(), SignError> {
    let obj = message.as_object().ok_or(SignError::NotAnObject)?;
    let security = obj
        .get("security")
        .and_then(Value::as_object)
        .ok_or(SignError::MissingSecurity)?;
    let signature = security
        .get("signature")
        .and_then(Value::as_str)
        .ok_or(SignError::MissingSignature)?;
    let given = hex::decode(signature).map_err(|_| SignError::BadSignature)?;
    MacWriter::of(message, secret, exclude)
        .verify_slice(&given)
        .map_err(|_| SignError::BadSignature)
}

/// Keys of a `TaskPayload` its orchestrator signature `sig` does not cover
/// (besides `security` and `_signature`, never signed).
pub const TASK_UNSIGNED_KEYS: &[&str] = &["sig", "orchestrator_signature"];

/// The orchestrator's signature of a task payload (its `sig` field),
/// HMAC-SHA256 with `ORCHESTRATOR_SECRET_KEY` over the canonical payload.
pub fn sign_task(payload: &Value, secret: &str) -> String {
    sign_message(payload, secret, TASK_UNSIGNED_KEYS)
}

/// Checks a task payload's `sig` (as received) in constant time.
pub fn verify_task(payload: &Value, secret: &str) -> Result<(), SignError> {
    let sig = payload
        .get("sig")
        .and_then(Value::as_str)
        .ok_or(SignError::MissingSignature)?;
    let given = hex::decode(sig).map_err(|_| SignError::BadSignature)?;
    MacWriter::of(payload, secret, TASK_UNSIGNED_KEYS)
        .verify_slice(&given)
        .map_err(|_| SignError::BadSignature)
}

/// Adds `timestamp` (if missing) and a `security` block signed with `secret`.
pub fn seal(message: &mut Value, signer_id: &str, secret: &str, now_unix: i64) {
    let Some(obj) = message.as_object_mut() else {
        return;
    };
    obj.entry("timestamp").or_insert(Value::from(now_unix));
    obj.remove("security");
    let signature = sign_message(message, secret, &[]);
    let Some(obj) = message.as_object_mut() else {
        return;
    };
    obj.insert(
        "security".into(),
        serde_json::json!({ "signature": signature, "signer_id": signer_id }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A signed message that crossed the wire still verifies, whatever float
    /// it carries: parsing must give back the exact float that was written
    /// (serde_json's `float_roundtrip`), or the canonical text differs.
    #[test]
    fn signatures_survive_the_wire_for_any_float() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..20_000u64 {
            // A timestamp with microseconds, as the workers send.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ts = 1.795e9 + (x % 100_000_000_000) as f64 / 1e6 + i as f64 * 1e-7;
            let mut msg = serde_json::json!({"timestamp": ts, "data": {"took": ts / 7.0}});
            let sig = sign_message(&msg, "k", &[]);
            msg["security"] = serde_json::json!({"signature": sig});
            let wire = serde_json::to_string(&msg).unwrap();
            let back: Value = serde_json::from_str(&wire).unwrap();
            assert!(verify_message(&back, "k", &[]).is_ok(), "{wire}");
        }
    }

    #[test]
    fn canonical_form_sorts_drops_nulls_and_unsigned_keys() {
        let msg = json!({"b": 1, "a": {"z": null, "y": 2.0, "x": [null, 1.5]}, "security": {"signature": "x"}, "_signature": "y"});
        assert_eq!(
            canonical_json(&msg, &[]),
            r#"{"a":{"x":[null,1.5],"y":2},"b":1}"#
        );
    }

    #[test]
    fn unsigned_and_excluded_keys_are_left_out_at_the_top_level_only() {
        let msg = json!({"sig": "s", "n": {"sig": 1, "security": 2, "e": "\"\n"}, "neg": -3.0});
        assert_eq!(
            canonical_json(&msg, &["sig"]),
            r#"{"n":{"e":"\"\n","security":2,"sig":1},"neg":-3}"#
        );
    }

    #[test]
    fn canonical_form_keeps_utf8_raw() {
        assert_eq!(
            canonical_json(&json!({"m": "Привет"}), &[]),
            "{\"m\":\"Привет\"}"
        );
    }

    #[test]
    fn signature_matches_python_reference() {
        // python3 -c 'import hmac,hashlib,json; print(hmac.new(b"wtok", json.dumps({"status":"idle","timestamp":1795824946,"worker_id":"w1"}, sort_keys=True, separators=(",",":")).encode(), hashlib.sha256).hexdigest())'
        let msg = json!({"worker_id": "w1", "timestamp": 1795824946, "status": "idle"});
        assert_eq!(
            sign_message(&msg, "wtok", &[]),
            "5a4389f8b715af6e8d0c20c501f188dad02c8bfda863b31b80a4f86fdec031d4"
        );
    }

    #[test]
    fn seal_then_verify_round_trips_and_detects_tampering() {
        let mut msg = json!({"worker_id": "w1", "status": "idle"});
        seal(&mut msg, "w1", "secret", 1_800_000_000);
        assert_eq!(msg["timestamp"], 1_800_000_000);
        assert_eq!(msg["security"]["signer_id"], "w1");
        verify_message(&msg, "secret", &[]).unwrap();
        assert_eq!(
            verify_message(&msg, "other", &[]),
            Err(SignError::BadSignature)
        );
        msg["status"] = json!("busy");
        assert_eq!(
            verify_message(&msg, "secret", &[]),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn task_signature_covers_everything_but_sig_and_security() {
        // python3 -c 'import hmac,hashlib,json; print(hmac.new(b"osecret", json.dumps({"job_id":"j","params":{"message":"hello"},"priority":0,"step":1,"task_id":"t","timestamp":1795824959,"tracing_context":{},"type":"echo"}, sort_keys=True, separators=(",",":")).encode(), hashlib.sha256).hexdigest())'
        let mut payload = json!({"job_id": "j", "task_id": "t", "type": "echo", "params": {"message": "hello"},
            "tracing_context": {}, "priority": 0.0, "step": 1, "timestamp": 1795824959, "security": {"signature": "x"}});
        let sig = sign_task(&payload, "osecret");
        assert_eq!(
            sig,
            "2855b6aab49c5271ebbe955b845209f92ece917ab82b02fa05712e4ce10bc9e7"
        );
        payload["sig"] = json!(sig);
        verify_task(&payload, "osecret").unwrap();
        assert_eq!(verify_task(&payload, "other"), Err(SignError::BadSignature));
        payload["params"]["message"] = json!("tampered");
        assert_eq!(
            verify_task(&payload, "osecret"),
            Err(SignError::BadSignature)
        );
        payload.as_object_mut().unwrap().remove("sig");
        assert_eq!(
            verify_task(&payload, "osecret"),
            Err(SignError::MissingSignature)
        );
    }

    #[test]
    fn verify_names_what_is_missing() {
        assert_eq!(
            verify_message(&json!({"a": 1}), "s", &[]),
            Err(SignError::MissingSecurity)
        );
        assert_eq!(
            verify_message(&json!({"a": 1, "security": {}}), "s", &[]),
            Err(SignError::MissingSignature)
        );
    }
}
