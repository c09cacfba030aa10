//! The deployment in deploy/: every Kubernetes manifest validates offline against the OpenAPI
//! schemas of a pinned Kubernetes release (kubernetes-validate --strict), the validator rejects
//! broken manifests, kustomization.yaml lists every manifest, and the DaemonSet agrees with
//! `meshd run`, with its own ports and probes, with the policies ConfigMap and with the image.

mod support;

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use support::MESHD;
use yaml_rust2::{Yaml, YamlLoader};

/// The Kubernetes release the manifests are validated against: the newest one whose schemas
/// the pinned kubernetes-validate (xtask/src/setup.rs) ships.
const KUBERNETES_VERSION: &str = "1.37.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kubernetes_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// Every Kubernetes object manifest in deploy/kubernetes (kustomization.yaml is kustomize's
/// input, not an object), sorted, so a new file is covered without touching this test.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(kubernetes_dir())
        .expect("deploy/kubernetes exists")
        .map(|e| e.expect("listing deploy/kubernetes").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .filter(|p| p.file_name().and_then(|n| n.to_str()) != Some("kustomization.yaml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no manifests in {}",
        kubernetes_dir().display()
    );
    files
}

fn load(path: &Path) -> Vec<Yaml> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The single document of a manifest.
fn object(name: &str) -> Yaml {
    let mut docs = load(&kubernetes_dir().join(name));
    assert_eq!(docs.len(), 1, "{name} holds one object");
    docs.remove(0)
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .map(|s| s.as_str().expect("a list of strings").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// kubernetes-validate from the venv `cargo xtask setup --test-deps` fills. Without it the test
/// is skipped, unless MESHD_REQUIRE_EBPF=1 (as in CI), where skipping is forbidden.
fn validator(test: &str) -> Option<PathBuf> {
    let bin = repo().join("target/pyvenv/bin/kubernetes-validate");
    if bin.exists() {
        return Some(bin);
    }
    let why = format!(
        "{} is not installed; `cargo xtask setup --test-deps` installs it",
        bin.display()
    );
    if std::env::var("MESHD_REQUIRE_EBPF").as_deref() == Ok("1") {
        panic!("{test}: {why}, and MESHD_REQUIRE_EBPF=1 forbids skipping");
    }
    eprintln!("skipping {test}: {why}");
    None
}

/// Validates `files` strictly (unknown fields are errors). Accepted only when the tool succeeds,
/// reports no warning or error, and passes every document: a kind it has no schema for is only
/// a warning to kubernetes-validate, which must not count as valid here.
fn validate(bin: &Path, files: &[PathBuf]) -> Result<String, String> {
    let out = Command::new(bin)
        .arg("--strict")
        .args(["--kubernetes-version", KUBERNETES_VERSION])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let documents: usize = files.iter().map(|f| load(f).len()).sum();
    let passed = report
        .lines()
        .filter(|l| l.starts_with("INFO") && l.contains(" passed "))
        .count();
    let complaints = report
        .lines()
        .any(|l| l.starts_with("WARN") || l.starts_with("ERROR"));
    if out.status.success() && !complaints && passed == documents {
        Ok(report)
    } else {
        Err(format!(
            "{} ({passed} of {documents} documents passed):\n{report}",
            out.status
        ))
    }
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let Some(bin) = validator("manifests_validate_against_the_kubernetes_schemas") else {
        return;
    };
    let files = manifests();
    if let Err(e) = validate(&bin, &files) {
        panic!("deploy/kubernetes does not validate against Kubernetes {KUBERNETES_VERSION}: {e}");
    }
}

#[test]
fn the_validator_rejects_broken_manifests() {
    let Some(bin) = validator("the_validator_rejects_broken_manifests") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("meshd-deploy-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let daemonset = |container: &str| {
        format!(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: meshd\nspec:\n  \
             selector:\n    matchLabels:\n      app: meshd\n  template:\n    metadata:\n      \
             labels:\n        app: meshd\n    spec:\n      containers:\n        - name: meshd\n{container}"
        )
    };
    let cases = [
        ("valid.yaml", daemonset("          image: meshd:1\n")),
        ("wrong-type.yaml", daemonset("          image: 5\n")),
        (
            "unknown-field.yaml",
            daemonset("          image: meshd:1\n          imagePulPolicy: Always\n"),
        ),
        (
            "unknown-kind.yaml",
            "apiVersion: apps/v1\nkind: DaemonZet\nmetadata:\n  name: meshd\n".to_string(),
        ),
    ];
    for (name, text) in &cases {
        fs::write(dir.join(name), text).unwrap();
    }
    let result = |name: &str| validate(&bin, &[dir.join(name)]);
    // The control: the same DaemonSet, well formed, passes, so the rejections below are about
    // what each one breaks.
    if let Err(e) = result("valid.yaml") {
        panic!("a valid DaemonSet is rejected: {e}");
    }
    for (name, _) in &cases[1..] {
        match result(name) {
            Ok(report) => panic!("{name} was accepted:\n{report}"),
            Err(e) => eprintln!("{name} rejected as expected: {e}"),
        }
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn kustomization_lists_every_manifest() {
    let kustomization = object("kustomization.yaml");
    let listed: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    let present: BTreeSet<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml's resources must list exactly the manifests in deploy/kubernetes"
    );
}

/// The DaemonSet's pod spec, its meshd container and its `meshd check` init container.
struct Pod {
    daemonset: Yaml,
    spec: Yaml,
    meshd: Yaml,
    check: Yaml,
}

fn pod() -> Pod {
    let daemonset = object("daemonset.yaml");
    assert_eq!(daemonset["kind"].as_str(), Some("DaemonSet"));
    let spec = daemonset["spec"]["template"]["spec"].clone();
    let named = |list: &Yaml, name: &str| {
        list.as_vec()
            .and_then(|v| v.iter().find(|c| c["name"].as_str() == Some(name)))
            .cloned()
            .unwrap_or_else(|| panic!("the DaemonSet has no container named {name}"))
    };
    let meshd = named(&spec["containers"], "meshd");
    let check = named(&spec["initContainers"], "check");
    Pod {
        daemonset,
        spec,
        meshd,
        check,
    }
}

/// A container's full argv: command, then args.
fn argv(container: &Yaml) -> Vec<String> {
    let mut v = strings(&container["command"]);
    v.extend(strings(&container["args"]));
    v
}

/// The arguments after `meshd run` in the daemon's argv.
fn run_args(meshd: &Yaml) -> Vec<String> {
    let argv = argv(meshd);
    let at = argv
        .windows(2)
        .position(|w| w[0] == "meshd" && w[1] == "run")
        .unwrap_or_else(|| panic!("the meshd container does not run `meshd run`: {argv:?}"));
    argv[at + 2..].to_vec()
}

/// The value given to `--flag` (as `--flag VALUE` or `--flag=VALUE`).
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(str::to_string)
        }
    })
}

fn seconds(duration: &str) -> f64 {
    let (number, scale) = if let Some(ms) = duration.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = duration.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = duration.strip_suffix('m') {
        (m, 60.0)
    } else {
        panic!("unexpected duration {duration:?}")
    };
    number.parse::<f64>().expect("a number") * scale
}

#[test]
fn daemonset_flags_exist_in_meshd_run() {
    let args = run_args(&pod().meshd);
    let out = Command::new(MESHD)
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "meshd run --help failed");
    let help = String::from_utf8_lossy(&out.stdout);
    let known: BTreeSet<&str> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .filter(|t| t.starts_with("--"))
        .collect();
    let flags = args
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap());
    let mut unknown = Vec::new();
    for flag in flags {
        if known.contains(flag) {
            continue;
        }
        unknown.push(flag);
    }
    assert!(
        unknown.is_empty(),
        "the DaemonSet passes flags `meshd run` does not have: {unknown:?}\n{help}"
    );
}

#[test]
fn daemonset_ports_probes_and_grace_period_agree_with_its_args() {
    let pod = pod();
    let args = run_args(&pod.meshd);
    let admin = flag_value(&args, "--admin").expect("the DaemonSet sets --admin");
    let admin_port: i64 = admin.rsplit(':').next().unwrap().parse().unwrap();
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let get = &pod.meshd[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some("/ready"), "{probe} path");
        assert_eq!(get["port"].as_i64(), Some(admin_port), "{probe} port");
    }
    let annotations = &pod.daemonset["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(admin_port.to_string().as_str())
    );
    let port = |flag: &str, default: i64| {
        flag_value(&args, flag).map_or(default, |v| v.parse().expect("a port"))
    };
    let declared: BTreeSet<i64> = pod.meshd["ports"]
        .as_vec()
        .expect("the meshd container declares its ports")
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    let expected: BTreeSet<i64> = [
        admin_port,
        port("--outbound-port", 15001),
        port("--inbound-port", 15008),
    ]
    .into();
    assert_eq!(
        declared, expected,
        "containerPorts: admin, outbound and tunnel"
    );
    let drain = seconds(&flag_value(&args, "--drain-timeout").unwrap_or_else(|| "5s".into()));
    let grace = pod.spec["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds is set") as f64;
    assert!(
        grace > drain + 2.0,
        "terminationGracePeriodSeconds ({grace}) must outlast the drain ({drain}s) and the teardown"
    );
    let limits = &pod.meshd["resources"]["limits"];
    assert!(
        limits["cpu"].is_badvalue(),
        "no CPU limit on a node proxy: throttling delays every pod's traffic"
    );
    assert!(!limits["memory"].is_badvalue(), "a memory limit is set");
}

#[test]
fn the_check_init_container_matches_the_daemon() {
    let pod = pod();
    assert_eq!(
        pod.check["image"].as_str(),
        pod.meshd["image"].as_str(),
        "`meshd check` runs from the daemon's image"
    );
    assert_eq!(argv(&pod.check), ["meshd", "check"]);
    let mounts = |c: &Yaml| -> BTreeSet<String> {
        c["volumeMounts"]
            .as_vec()
            .map(|v| {
                v.iter()
                    .map(|m| m["mountPath"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (check, daemon) = (mounts(&pod.check), mounts(&pod.meshd));
    for path in ["/sys/fs/cgroup", "/sys/fs/bpf"] {
        assert!(check.contains(path), "meshd check mounts {path}");
        assert!(daemon.contains(path), "meshd mounts {path}");
    }
}

#[test]
fn policies_configmap_is_mounted_at_config_and_passes_analyze() {
    let pod = pod();
    let config = flag_value(&run_args(&pod.meshd), "--config").expect("--config is set");
    let mount = pod.meshd["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(config.as_str()))
        .unwrap_or_else(|| panic!("nothing is mounted at --config {config}"))
        .clone();
    let volume = pod.spec["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == mount["name"].as_str())
        .expect("the mount's volume")
        .clone();
    let configmap = object("configmap.yaml");
    assert_eq!(
        volume["configMap"]["name"].as_str(),
        configmap["metadata"]["name"].as_str(),
        "--config is the policies ConfigMap"
    );
    let data = configmap["data"].as_hash().expect("the ConfigMap has data");
    assert!(!data.is_empty());
    let dir = std::env::temp_dir().join(format!("meshd-deploy-policies-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    for (key, value) in data {
        fs::write(dir.join(key.as_str().unwrap()), value.as_str().unwrap()).unwrap();
    }
    let out = Command::new(MESHD)
        .arg("analyze")
        .arg(&dir)
        .output()
        .unwrap();
    let _ = fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "the ConfigMap's policies fail `meshd analyze`:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_image_provides_what_the_daemonset_runs() {
    let pod = pod();
    let dockerfile = fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    // The runtime stage: everything after the last FROM.
    let runtime = dockerfile
        .rsplit_once("\nFROM ")
        .expect("a multi-stage Dockerfile")
        .1;
    assert!(
        runtime.contains("COPY --from=builder") && runtime.contains("/usr/local/bin/meshd"),
        "the runtime stage puts meshd on PATH at /usr/local/bin/meshd"
    );
    let argv = argv(&pod.meshd);
    assert!(argv.iter().any(|a| a == "meshd"), "{argv:?}");
    if argv[0] == "nsenter" {
        assert!(
            runtime.contains("util-linux"),
            "the DaemonSet runs nsenter, which the image installs with util-linux"
        );
    }
    let image = pod.meshd["image"].as_str().unwrap();
    assert_eq!(
        image,
        format!("ghcr.io/meshd/meshd:{}", env!("CARGO_PKG_VERSION")),
        "the DaemonSet runs the image of this version (deploy/Dockerfile's tag)"
    );
    assert!(
        dockerfile.contains(&format!("-t {image} ")),
        "deploy/Dockerfile's build command tags {image}"
    );
}
