//! Caps that keep hostile or accidental input (huge files, deep nesting, alias bombs) cheap.

/// Largest policy file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 8 << 20;
/// Deepest nesting of mappings and sequences in one document.
pub const MAX_DEPTH: usize = 64;
/// Most documents (`---`) in one file.
pub const MAX_DOCUMENTS: usize = 10_000;
/// Most YAML nodes in one file, aliases expanded.
pub const MAX_NODES: usize = 1_000_000;
/// Most policy files in one load.
pub const MAX_FILES: usize = 10_000;
/// Deepest directory recursion (guards against symlink loops).
pub const MAX_DIR_DEPTH: usize = 32;
/// Largest compiled regular expression, in bytes.
pub const MAX_REGEX_BYTES: usize = 1 << 20;

/// The longest TCP keepalive time or interval Linux takes (`MAX_TCP_KEEPIDLE`); a longer one
/// is refused with EINVAL, so meshd caps a DestinationRule's `tcpKeepalive` at it.
pub const MAX_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(32_767);
