//! `meshd analyze` end to end on real Istio YAML and broken YAML.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The workspace root: paths in meshd's output are relative to it.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("CARGO_MANIFEST_DIR has no parent"))
        .to_path_buf()
}

fn analyze(args: &[&str]) -> (i32, Vec<String>, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .arg("analyze")
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running meshd analyze {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout.lines().map(str::to_string).collect();
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("meshd analyze {args:?} was killed: {:?}", out.status));
    (
        code,
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_policies_folder_is_clean() {
    let (code, lines, stderr) = analyze(&["policies/"]);
    assert_eq!(code, 0, "stdout: {lines:#?}\nstderr: {stderr}");
    assert_eq!(lines.len(), 1, "expected only the summary: {lines:#?}");
    assert!(lines[0].contains(": 0 errors, 0 warnings"), "{}", lines[0]);
}

#[test]
fn every_policy_file_loads_on_its_own() {
    let mut files = Vec::new();
    let mut dirs = vec![root().join("policies")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    assert!(
        files.len() >= 7,
        "expected the article's examples, found {files:?}"
    );
    for file in files {
        match meshd::policy::load(std::slice::from_ref(&file)) {
            Ok(set) => assert!(!set.is_empty(), "{} holds no resource", file.display()),
            Err(e) => panic!("{} does not load:\n{e}", file.display()),
        }
    }
}

#[test]
fn a_broken_file_yields_exactly_its_errors() {
    let (code, lines, _) = analyze(&["tests/fixtures/policies/broken.yaml"]);
    let f = "tests/fixtures/policies/broken.yaml";
    let expected = [
        format!("{f}:15:15: error: spec.http[0].route[0].weight: the weights of a route's destinations add up to 0, so none would get traffic"),
        format!("{f}:20:14: error: spec.http[0].timeout: invalid duration \"2 seconds\": expected a number and a unit (ns, us, ms, s, m, h), e.g. 250ms, 2s, 1.5h"),
        format!("{f}:23:7: error: spec.http[0].retries: unknown field \"perTryTimout\", did you mean \"perTryTimeout\"?"),
        format!("{f}:34:25: error: spec.trafficPolicy.connectionPool.tcp.maxConnections: must be at least 0, got -1"),
        format!("{f}:38:27: error: spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be at most 100, got 150"),
        format!("{f}:41:7: error: kind: EnvoyFilter is not supported: meshd has no Envoy to patch. Write rate limits as a meshd.io/v1alpha1 RateLimitPolicy (see policies/ratelimit.yaml); other Envoy patches have no meshd equivalent"),
        "analyzed 1 file (0 valid resources): 6 errors, 0 warnings; cross-resource checks run once the errors are fixed".to_string(),
    ];
    assert_eq!(lines, expected);
    assert_eq!(code, 1);
}

#[test]
fn warnings_alone_exit_zero() {
    let (code, lines, _) = analyze(&["tests/fixtures/policies/warnings.yaml"]);
    assert_eq!(
        lines,
        [
            "tests/fixtures/policies/warnings.yaml:17:5: warning: spec.http[1]: this route is unreachable: spec.http[0] before it matches every request",
            "analyzed 1 file (2 valid resources): 0 errors, 1 warning",
        ]
    );
    assert_eq!(code, 0);
}

#[test]
fn cross_resource_errors_fail_too() {
    let dir = std::env::temp_dir().join(format!("meshd-analyze-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let canary = fs::read_to_string(root().join("policies/canary.yaml"))
        .unwrap_or_else(|e| panic!("{e}"))
        .replace("subset: v2", "subset: v3");
    fs::write(dir.join("canary.yaml"), canary).unwrap_or_else(|e| panic!("{e}"));
    let (code, lines, _) = analyze(&[dir.to_str().unwrap_or_default()]);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(code, 1, "{lines:#?}");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].ends_with(":19:17: error: spec.http[0].route[1].destination.subset: subset \"v3\" is not defined by DestinationRule default/checkout for host checkout.default.svc.cluster.local (it defines v1, v2)"),
        "{}",
        lines[0]
    );
}

/// Two VirtualServices for one host in files named at will: the warning is on the younger
/// one, wherever it loads, and names the older one that applies, as in Istio.
#[test]
fn the_younger_of_two_virtual_services_for_a_host_is_the_one_warned_about() {
    let dir = std::env::temp_dir().join(format!("meshd-analyze-age-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let vs = |name: &str, created: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: default\n  creationTimestamp: \"{created}\"\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews}}}}]\n"
        )
    };
    let write = |file: &str, text: String| {
        fs::write(dir.join(file), text).unwrap_or_else(|e| panic!("{e}"));
    };
    write("1.yaml", vs("reviews-young", "2024-02-01T00:00:00Z"));
    write("2.yaml", vs("reviews-old", "2024-01-01T00:00:00Z"));
    let (code, lines, _) = analyze(&[dir.to_str().unwrap_or_default()]);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(code, 0, "{lines:#?}");
    let routed = lines
        .iter()
        .filter(|l| l.contains("IST0109"))
        .collect::<Vec<_>>();
    assert_eq!(routed.len(), 1, "{lines:#?}");
    assert!(
        routed[0].contains("1.yaml:8:11: warning: spec.hosts[0]: host reviews.default.svc.cluster.local is also routed by VirtualService default/reviews-old (")
            && routed[0].contains("(older by creationTimestamp: 2024-01-01T00:00:00Z, this one 2024-02-01T00:00:00Z)"),
        "{}",
        routed[0]
    );
}

#[test]
fn unreadable_input_exits_two() {
    let (code, lines, stderr) = analyze(&["policies/", "no/such/dir"]);
    assert_eq!(code, 2);
    assert!(lines.is_empty(), "{lines:#?}");
    assert_eq!(
        stderr.trim(),
        "meshd analyze: no/such/dir: no such file or directory"
    );
}

/// A file in another encoding is a finding at its first invalid byte (exit 1), reported with
/// every other file's findings.
#[test]
fn text_that_is_not_utf8_is_an_error_finding() {
    let dir = std::env::temp_dir().join(format!("meshd-analyze-bin-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let file = dir.join("latin1.yaml");
    fs::write(&file, b"kind: caf\xe9\n").unwrap_or_else(|e| panic!("{e}"));
    let (code, lines, _) = analyze(&[file.to_str().unwrap_or_default(), "policies/"]);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(code, 1, "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.ends_with(
            "latin1.yaml:1:10: error: not UTF-8 text: this byte is invalid (policy files are UTF-8 YAML)"
        )),
        "{lines:#?}"
    );
    assert!(
        lines.last().is_some_and(|l| l.contains("1 error")),
        "{lines:#?}"
    );
}
