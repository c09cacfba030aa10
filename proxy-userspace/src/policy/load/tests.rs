//! Loading files and documents: discovery, multi-document files, limits, unreadable input and
//! input that must never crash the loader.

use std::{fs, path::PathBuf};

use crate::policy::{LoadFailure, analyze, limits::MAX_FILE_BYTES, load, load_all, load_str};

const PA: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: NAME}\nspec: {mtls: {mode: STRICT}}\n";

fn pa(name: &str) -> String {
    PA.replace("NAME", name)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshd-policy-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn multi_document_files_load_every_document() {
    let text = format!("---\n{}---\n---\n{}...\n", pa("a"), pa("b"));
    let set = load_str("m.yaml".as_ref(), &text).unwrap();
    assert_eq!(set.peer_authentications.len(), 2);
    let b = &set.peer_authentications[1];
    assert_eq!(b.metadata.name, "b");
    assert_eq!(b.metadata.namespace, "default");
    assert_eq!((b.origin.document, b.origin.line), (2, 8));
    assert_eq!(b.pos("spec.mtls.mode").line, 11);
}

#[test]
fn errors_in_several_documents_are_all_reported() {
    let bad = pa("x").replace("STRICT", "NOPE");
    let text = format!("{}---\n{bad}---\n{bad}", pa("a"));
    let Err(LoadFailure::Invalid(f)) = load_str("m.yaml".as_ref(), &text) else {
        panic!("expected errors");
    };
    let lines: Vec<usize> = f.iter().map(|f| f.line).collect();
    assert_eq!(lines, [9, 14]);
}

#[test]
fn duplicate_resources_are_errors() {
    let text = format!("{}---\n{}", pa("a"), pa("a"));
    let Err(LoadFailure::Invalid(f)) = load_str("d.yaml".as_ref(), &text) else {
        panic!("expected errors");
    };
    assert_eq!(
        f[0].to_string(),
        "d.yaml:8:18: error: metadata.name: PeerAuthentication default/a is defined twice (first at d.yaml:1)"
    );
}

#[test]
fn directories_are_scanned_recursively_in_order() {
    let dir = temp_dir("scan");
    fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    fs::create_dir_all(dir.join("..data")).unwrap();
    fs::write(dir.join("b.yaml"), pa("b")).unwrap();
    fs::write(dir.join("a.yml"), pa("a")).unwrap();
    fs::write(dir.join("sub/deeper/c.yaml"), pa("c")).unwrap();
    fs::write(dir.join("README.md"), "not yaml").unwrap();
    fs::write(dir.join(".hidden.yaml"), pa("hidden")).unwrap();
    fs::write(dir.join("..data/a.yml"), pa("a")).unwrap();
    let set = load(std::slice::from_ref(&dir)).unwrap();
    let names: Vec<&str> = set
        .peer_authentications
        .iter()
        .map(|p| p.metadata.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(set.files, 3);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn unreadable_input_is_not_a_finding() {
    let dir = temp_dir("unreadable");
    let missing = dir.join("missing.yaml");
    let Err(LoadFailure::Unreadable(errors)) = load(&[missing]) else {
        panic!("expected unreadable input");
    };
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        text[0].ends_with("missing.yaml: no such file or directory"),
        "{text:?}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// A file that is not UTF-8 is a finding at its first invalid byte, beside the other files'
/// findings, not an input that stops the whole load.
#[test]
fn text_that_is_not_utf8_is_a_finding_at_its_byte() {
    let dir = temp_dir("not-utf8");
    let binary = dir.join("binary.yaml");
    // Line 2, after 19 characters (the `é` is one character of two bytes).
    let mut bytes = "kind: A\nmetadata: {name: \"é".as_bytes().to_vec();
    bytes.push(0xff);
    fs::write(&binary, bytes).unwrap();
    let other = dir.join("other.yaml");
    fs::write(&other, "kind: [").unwrap();
    let Err(LoadFailure::Invalid(findings)) = load(&[binary, other]) else {
        panic!("expected findings");
    };
    let text: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    assert!(
        text.iter().any(|t| t.ends_with(
            "binary.yaml:2:20: error: not UTF-8 text: this byte is invalid (policy files are UTF-8 YAML)"
        )),
        "{text:?}"
    );
    assert!(text.iter().any(|t| t.contains("other.yaml:")), "{text:?}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn special_files_are_refused_without_reading_them() {
    let dir = temp_dir("special");
    fs::write(dir.join("a.yaml"), pa("a")).unwrap();
    let fifo = dir.join("pipe.yaml");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
    // Opening the FIFO would block and /dev/zero never ends: both must be refused unread.
    for input in [vec![dir.clone()], vec!["/dev/zero".into()]] {
        let Err(LoadFailure::Unreadable(errors)) = load(&input) else {
            panic!("expected unreadable input");
        };
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .all(|t| t.contains(": not a regular file (a FIFO")),
            "{text:?}"
        );
        assert_eq!(text.len(), input[0].is_dir() as usize + 1, "{text:?}");
    }
    assert!(matches!(
        crate::policy::source::read_bytes(&fifo),
        Err(crate::policy::source::SourceError::NotRegular(_))
    ));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn oversized_files_are_refused() {
    let dir = temp_dir("size");
    let big = dir.join("big.yaml");
    let mut text = pa("a");
    text.push_str(&"# padding\n".repeat((MAX_FILE_BYTES / 10 + 1) as usize));
    fs::write(&big, text).unwrap();
    let loaded = load_all(std::slice::from_ref(&big)).unwrap();
    assert_eq!(loaded.findings.len(), 1);
    let msg = loaded.findings[0].to_string();
    assert!(msg.contains(":1:1: error: file is "), "{msg}");
    assert!(msg.contains("more than the 8 MiB limit"), "{msg}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn deep_nesting_is_refused() {
    let text = format!(
        "{}spec: {}\n",
        pa("a").replace("spec: {mtls: {mode: STRICT}}\n", ""),
        "[".repeat(100)
    );
    let Err(LoadFailure::Invalid(f)) = load_str("deep.yaml".as_ref(), &text) else {
        panic!("expected errors");
    };
    assert_eq!(f.len(), 1);
    assert_eq!(
        f[0].to_string(),
        "deep.yaml:4:70: error: nesting deeper than 64 levels"
    );
}

/// A tiny deterministic generator, so that the test needs no extra dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
}

#[test]
fn arbitrary_input_never_panics() {
    const PIECES: &[&str] = &[
        "apiVersion: networking.istio.io/v1\n",
        "kind: VirtualService\n",
        "kind: DestinationRule\n",
        "metadata: {name: a}\n",
        "spec:\n",
        "  http:\n",
        "  - route:\n",
        "    - destination: {host: r, subset: v1}\n",
        "      weight: 50\n",
        "  host: r\n",
        "  hosts: [r]\n",
        "---\n",
        "  subsets: [{name: v1}]\n",
        "[",
        "]",
        "{",
        "}",
        ":",
        "- ",
        "&a ",
        "*a",
        "!!str ",
        "\"",
        "'",
        "\t",
        " ",
        "\n",
        "#",
        "|\n",
        "? ",
        "0x",
        "9",
        "\u{feff}",
        "é",
        "\0",
        "%YAML 1.2\n",
        "...\n",
        "  retries: {attempts: 3}\n",
    ];
    let mut rng = Lcg(42);
    for _ in 0..3000 {
        let n = rng.next() % 40;
        let text: String = (0..n).map(|_| PIECES[rng.next() % PIECES.len()]).collect();
        if let Ok(set) = load_str("fuzz.yaml".as_ref(), &text) {
            let _ = analyze(&set);
        }
    }
}

#[test]
fn kubectl_lists_load_their_items() {
    let item = |name: &str| {
        format!(
            "- apiVersion: security.istio.io/v1\n  kind: PeerAuthentication\n  metadata: {{name: {name}}}\n  spec: {{mtls: {{mode: STRICT}}}}\n"
        )
    };
    let text = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}{}metadata: {{resourceVersion: \"\"}}\n",
        item("a"),
        item("b")
    );
    let set = load_str("l.yaml".as_ref(), &text).unwrap();
    let names: Vec<&str> = (set.peer_authentications.iter())
        .map(|p| p.metadata.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(set.peer_authentications[1].origin.line, 8);
    // An item's error is reported at its own line.
    let bad = text.replace(
        "name: b}\n  spec: {mtls: {mode: STRICT}}",
        "name: b}\n  spec: {mtls: {mode: NOPE}}",
    );
    let Err(LoadFailure::Invalid(f)) = load_str("l.yaml".as_ref(), &bad) else {
        panic!("expected errors");
    };
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].line, 11, "{f:?}");
}

#[test]
fn a_list_inside_a_list_is_read_and_an_empty_one_is_empty() {
    let deny_all = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: default}\nspec: {}\n";
    let nested = format!(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items:\n{}",
        deny_all
            .lines()
            .enumerate()
            .map(|(i, l)| format!("  {} {l}\n", if i == 0 { "-" } else { " " }))
            .collect::<String>()
    );
    let read = |file: &str, text: &str| {
        let mut loaded = super::Loaded::default();
        super::load_text(file.as_ref(), text, &mut loaded);
        loaded
    };
    let loaded = read("n.yaml", &nested);
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    assert_eq!(loaded.set.authorization_policies.len(), 1, "{nested}");
    for empty in ["items: []", "items: null", ""] {
        let text = format!("apiVersion: v1\nkind: List\n{empty}\n");
        let loaded = read("e.yaml", &text);
        assert!(loaded.findings.is_empty(), "{empty}: {:?}", loaded.findings);
    }
    let Err(LoadFailure::Invalid(f)) = load_str(
        "m.yaml".as_ref(),
        "apiVersion: v1\nkind: List\nitems: {a: 1}\n",
    ) else {
        panic!("expected an error");
    };
    assert!(
        f[0].message.contains("items: expected a list of resources"),
        "{f:?}"
    );
}

#[test]
fn other_kinds_beside_the_policies_are_skipped_with_a_warning() {
    let text = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec: {{replicas: 1}}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec: {{selector: {{istio: ingressgateway}}}}\n---\n{}",
        pa("a")
    );
    let set = load_str("k.yaml".as_ref(), &text).unwrap();
    assert_eq!(set.peer_authentications.len(), 1);
    let warnings: Vec<String> = set.warnings.iter().map(|f| f.to_string()).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(
        warnings[0],
        "k.yaml:2:7: warning: kind: \"Deployment\" of API group apps is not a resource meshd reads; skipped"
    );
    assert!(
        warnings[1]
            .starts_with("k.yaml:7:7: warning: kind: Gateway is not read by meshd and is skipped"),
        "{warnings:?}"
    );
    // A resource that can deny traffic is still refused.
    let jwt = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt}\nspec: {}\n";
    assert!(load_str("j.yaml".as_ref(), jwt).is_err());
}
