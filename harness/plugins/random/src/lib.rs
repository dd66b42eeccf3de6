//! Example source plugin `random`: exports `Random`, which returns the ABI v1 descriptor
//! (see docs/plugin-abi.md).

use std::os::raw::c_char;

/// The ABI v1 descriptor, laid out as `KuiperPluginV1` in docs/plugin-abi.md.
#[repr(C)]
pub struct KuiperPluginV1 {
    pub abi_version: u32,
    pub kind: u32,
    pub name: *const c_char,
    pub version: *const c_char,
}

// SAFETY: the descriptor only points at static, immutable NUL-terminated strings.
unsafe impl Sync for KuiperPluginV1 {}

static DESCRIPTOR: KuiperPluginV1 = KuiperPluginV1 {
    abi_version: 1,
    kind: 0,
    name: c"random".as_ptr(),
    version: c"1.0.0".as_ptr(),
};

/// The plugin's exported entry point, named after the plugin (`random` -> `Random`).
#[allow(non_snake_case)]
#[unsafe(no_mangle)]
pub extern "C" fn Random() -> *const KuiperPluginV1 {
    &DESCRIPTOR
}
