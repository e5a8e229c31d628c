//! What an uploaded plugin must be: a WebAssembly component (not a core
//! module, not truncated) that exports the `task-plugin` world's handler.
//! The check reads the component's type; it never runs it.

use wasmparser::component_types::ComponentEntityType;
use wasmparser::{Validator, WasmFeatures};

/// The interface every plugin exports (see `wit/plugin.wit`).
pub const HANDLER_EXPORT: &str = "taskworker:plugin/handler@0.1.0";
/// The functions it must hold.
const HANDLER_FUNCS: [&str; 2] = ["describe", "execute"];

/// Why an upload is not a plugin.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckError {
    #[error("the upload is empty")]
    Empty,
    #[error("the upload is {size} bytes; plugins may be at most {max} bytes (max_plugin_bytes)")]
    TooLarge { size: usize, max: usize },
    #[error("not a WebAssembly file (it does not start with \\0asm)")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component; build plugins with `cargo build --target wasm32-wasip2` or `cargo component build`"
    )]
    CoreModule,
    #[error("not a valid component: {0}")]
    Invalid(String),
    #[error("a component of another world: {0}")]
    WrongWorld(String),
}

/// Checks `bytes` before anything is stored.
pub fn check_plugin(bytes: &[u8], max: usize) -> Result<(), CheckError> {
    if bytes.is_empty() {
        return Err(CheckError::Empty);
    }
    if bytes.len() > max {
        return Err(CheckError::TooLarge {
            size: bytes.len(),
            max,
        });
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(CheckError::NotWasm);
    }
    // Bytes 4..8 are the version and layer; a core module is `01 00 00 00`.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(CheckError::CoreModule);
    }
    let types = Validator::new_with_features(WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| CheckError::Invalid(e.to_string()))?;
    let item = types.component_item_for_export(HANDLER_EXPORT).ok_or_else(|| {
        CheckError::WrongWorld(format!(
            "it does not export `{HANDLER_EXPORT}` (plugins target the `task-plugin` world in wit/plugin.wit)"
        ))
    })?;
    let ComponentEntityType::Instance(id) = item.ty else {
        return Err(CheckError::WrongWorld(format!(
            "its export `{HANDLER_EXPORT}` is not an interface instance"
        )));
    };
    let exports = &types[id].exports;
    for func in HANDLER_FUNCS {
        match exports.get(func).map(|e| &e.ty) {
            Some(ComponentEntityType::Func(_)) => {}
            _ => {
                return Err(CheckError::WrongWorld(format!(
                    "`{HANDLER_EXPORT}` has no function `{func}`"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_components_are_named() {
        assert_eq!(check_plugin(b"", 10), Err(CheckError::Empty));
        assert_eq!(
            check_plugin(b"0123456789ab", 10),
            Err(CheckError::TooLarge { size: 12, max: 10 })
        );
        assert_eq!(check_plugin(b"GIF89a..", 100), Err(CheckError::NotWasm));
        assert_eq!(
            check_plugin(b"\0asm\x01\0\0\0", 100),
            Err(CheckError::CoreModule)
        );
        // An empty component: valid, but it exports no handler.
        let err = check_plugin(b"\0asm\x0d\0\x01\0", 100).unwrap_err();
        assert!(matches!(err, CheckError::WrongWorld(_)), "{err}");
        let err = check_plugin(b"\0asm\x0d\0\x01\0\x07\x05", 100).unwrap_err();
        assert!(matches!(err, CheckError::Invalid(_)), "{err}");
    }
}
