//! Egress TLS origination as in Istio's task of that name: the client speaks plain HTTP to a
//! ServiceEntry host on port 80, and the DestinationRule's `tls: {mode: SIMPLE}` makes meshd
//! open TLS to the server (here `openssl s_server` on loopback, with a certificate from a CA
//! the test makes). Both forms of the task: a VirtualService sending port 80 to port 443, and
//! the current one, without a VirtualService, where port 80's `targetPort` is 443. And a route
//! from one host to a DNS ServiceEntry without endpoints, which goes to the addresses its host
//! resolves to, and what each DNS answer does to those addresses. Connections opened under one
//! DestinationRule's `tls` block serve no client another block applies to.

mod support;

use std::{path::Path, time::Duration};

use support::{
    Daemon, ebpf_available,
    http_backend::HttpBackend,
    mesh::curl,
    mesh::start,
    tls::{TlsServer, certificates, self_signed_certificate},
};

/// The task's resources, with `tls` as the DestinationRule's block for port 443.
fn policies(server_port: u16, tls: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: secure-example
spec:
  hosts:
  - secure.example
  addresses:
  - 127.0.0.52
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  - number: 443
    name: https-port
    protocol: HTTPS
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: 127.0.0.1
    ports:
      https-port: {server_port}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: secure-example
spec:
  hosts:
  - secure.example
  http:
  - match:
    - port: 80
    route:
    - destination:
        host: secure.example
        port:
          number: 443
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: secure-example
spec:
  host: secure.example
  trafficPolicy:
    portLevelSettings:
    - port:
        number: 443
      tls:
{tls}"#
    )
}

/// The DestinationRule's `tls` block: SIMPLE, trusting the CA certificates in `ca`.
fn simple_tls(ca: &Path) -> String {
    format!(
        "        mode: SIMPLE\n        caCertificates: {}\n",
        ca.display()
    )
}

fn get(d: &support::Daemon) -> String {
    get_as(d, "default/productpage")
}

/// `get` as `workload`.
fn get_as(d: &support::Daemon, workload: &str) -> String {
    support::mesh::curl_as(
        d,
        workload,
        &[
            "--resolve",
            "secure.example:80:127.0.0.52",
            "-w",
            "\n%{http_code}",
            "http://secure.example/",
        ],
    )
}

#[test]
fn a_self_signed_server_certificate_is_trusted_as_its_own_ca() {
    if !ebpf_available("egress_tls_self_signed") {
        return;
    }
    // The server presents the certificate caCertificates holds, a self-signed CA
    // certificate: trusted as itself, as Envoy trusts it, for its own name only.
    let certs = self_signed_certificate(
        &std::env::temp_dir().join("meshd-test-egress-self-signed"),
        "secure.example",
    );
    let server = TlsServer::start(&certs);
    let tls = simple_tls(&certs.join("ca.pem"));
    let d = start("egress-tls-self-signed", 327, &policies(server.port, &tls));
    let out = get(&d);
    assert!(out.ends_with("\n200") && out.contains("s_server"), "{out}");
    drop(d);
    let tls = simple_tls(&certs.join("ca.pem")) + "        sni: other.example\n";
    let d = start(
        "egress-tls-self-signed-name",
        328,
        &policies(server.port, &tls),
    );
    let out = get(&d);
    assert!(
        out.ends_with("\n503"),
        "another name than the certificate's: {out}"
    );
    assert!(d.log_text().contains("flags=UF"), "{}", d.log_text());
}

#[test]
fn plain_http_goes_out_as_tls_under_a_simple_destination_rule() {
    if !ebpf_available("egress_tls") {
        return;
    }
    let certs = certificates(
        &std::env::temp_dir().join("meshd-test-egress-certs"),
        "secure.example",
    );
    let server = TlsServer::start(&certs);
    let ca = certs.join("ca.pem");
    let tls = simple_tls(&ca);
    let d = start("egress-tls", 187, &policies(server.port, &tls));
    let out = get(&d);
    assert!(out.ends_with("\n200"), "{out}");
    assert!(
        out.contains("s_server"),
        "the TLS server answered, verified against the CA by the name secure.example: {out}"
    );
    drop(d);

    // The same server checked against another CA: the handshake fails, 503 UF.
    let other = certificates(
        &std::env::temp_dir().join("meshd-test-egress-other-ca"),
        "secure.example",
    );
    let tls = simple_tls(&other.join("ca.pem"));
    let d = start("egress-tls-bad-ca", 188, &policies(server.port, &tls));
    let out = get(&d);
    assert!(out.ends_with("\n503"), "{out}");
    assert!(d.log_text().contains("flags=UF"), "{}", d.log_text());
    assert!(
        d.log_text().contains("TLS with 127.0.0.1"),
        "{}",
        d.log_text()
    );
    drop(d);

    // insecureSkipVerify trusts any certificate; a subjectAltNames that the certificate does
    // not carry fails it.
    let d = start(
        "egress-tls-skip",
        189,
        &policies(
            server.port,
            "        mode: SIMPLE\n        insecureSkipVerify: true\n",
        ),
    );
    assert!(get(&d).ends_with("\n200"));
    drop(d);
    let tls = format!(
        "        mode: SIMPLE\n        caCertificates: {}\n        subjectAltNames: [other.example]\n",
        ca.display()
    );
    let d = start("egress-tls-san", 190, &policies(server.port, &tls));
    assert!(get(&d).ends_with("\n503"));
}

/// `caCrl`: the server is checked against the CA's revocation list too. Under a list that
/// revokes nothing the request goes through; under one that revokes the server's certificate
/// the handshake fails (503 UF, "Revoked" in the log); a file that holds no list is named.
#[test]
fn a_revoked_server_certificate_is_refused_under_ca_crl() {
    if !ebpf_available("egress_tls_crl") {
        return;
    }
    let certs = certificates(
        &std::env::temp_dir().join("meshd-test-egress-crl"),
        "secure.example",
    );
    let server = TlsServer::start(&certs);
    let tls = |crl: &Path| {
        format!(
            "        mode: SIMPLE\n        caCertificates: {}\n        caCrl: {}\n",
            certs.join("ca.pem").display(),
            crl.display()
        )
    };
    let d = start(
        "egress-crl-empty",
        233,
        &policies(server.port, &tls(&certs.join("crl-empty.pem"))),
    );
    let out = get(&d);
    assert!(out.ends_with("\n200"), "{out}\n{}", d.log_text());
    drop(d);
    let d = start(
        "egress-crl-revoked",
        234,
        &policies(server.port, &tls(&certs.join("crl.pem"))),
    );
    let out = get(&d);
    assert!(out.ends_with("\n503"), "{out}");
    assert!(d.log_text().contains("Revoked"), "{}", d.log_text());
    drop(d);
    let d = start(
        "egress-crl-not-a-list",
        235,
        &policies(server.port, &tls(&certs.join("ca.pem"))),
    );
    let out = get(&d);
    assert!(out.ends_with("\n503"), "{out}");
    let log = d.log_text();
    assert!(log.contains("tls.caCrl"), "{log}");
    drop(d);
    // A list past its next update is refused, as Envoy refuses it.
    let d = start(
        "egress-crl-expired",
        242,
        &policies(server.port, &tls(&certs.join("crl-expired.pem"))),
    );
    let out = get(&d);
    assert!(out.ends_with("\n503"), "{out}");
    assert!(
        d.log_text().contains("certificate revocation list expired"),
        "{}",
        d.log_text()
    );
}

/// The task as Istio documents it today: no VirtualService and no addresses; the ServiceEntry
/// resolves by DNS and has no endpoints, so the client resolves the name itself, and port 80's
/// `targetPort` and the DestinationRule's port-level `tls` on port 80 take the request to the
/// TLS port.
#[test]
fn the_current_task_originates_tls_on_the_target_port_without_a_virtual_service() {
    if !ebpf_available("egress_tls_target_port") {
        return;
    }
    let certs = certificates(
        &std::env::temp_dir().join("meshd-test-egress-target-port"),
        "secure.example",
    );
    let server = TlsServer::start(&certs);
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: secure-example
spec:
  hosts:
  - secure.example
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
    targetPort: {port}
  - number: 443
    name: https-port
    protocol: HTTPS
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: secure-example
spec:
  host: secure.example
  trafficPolicy:
    portLevelSettings:
    - port:
        number: 80
      tls:
        mode: SIMPLE
        caCertificates: {ca}
"#,
        port = server.port,
        ca = certs.join("ca.pem").display(),
    );
    let d = start("egress-tls-target-port", 196, &yaml);
    let out = curl(
        &d,
        &[
            "--resolve",
            "secure.example:80:127.0.0.1",
            "-w",
            "\n%{http_code}",
            "http://secure.example/",
        ],
    );
    assert!(out.ends_with("\n200"), "{out}");
    assert!(out.contains("s_server"), "TLS to the target port: {out}");
}

/// An HTTPS ServiceEntry without addresses, as Istio's egress tasks write them: the TLS
/// connection is known by the server name of its ClientHello, so the service's own cluster,
/// DestinationRule and telemetry apply, with no VirtualService.
#[test]
fn an_https_service_entry_without_addresses_is_known_by_its_server_name() {
    if !ebpf_available("egress_https_sni") {
        return;
    }
    let certs = certificates(
        &std::env::temp_dir().join("meshd-test-egress-https-sni"),
        "secure.example",
    );
    let server = TlsServer::start(&certs);
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: secure-example
spec:
  hosts:
  - secure.example
  ports:
  - number: {port}
    name: https
    protocol: HTTPS
  resolution: NONE
  location: MESH_EXTERNAL
"#,
        port = server.port,
    );
    let d = start("egress-https-sni", 284, &yaml);
    let url = format!("https://secure.example:{}/", server.port);
    let resolve = format!("secure.example:{}:127.0.0.1", server.port);
    // The server's certificate is not the point: `-k`.
    let out = curl(
        &d,
        &["--resolve", &resolve, "-k", "-w", "\n%{http_code}", &url],
    );
    assert!(out.ends_with("\n200"), "{out}");
    let line = support::eventually(std::time::Duration::from_secs(5), || {
        (d.log_text().lines())
            .find(|l| l.contains(r#""protocol":"tcp""#))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no TCP line:\n{}", d.log_text()));
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        entry["upstream_cluster"],
        format!("outbound|{}||secure.example", server.port),
        "{line}"
    );
    // Istio's fields for a connection routed by its ClientHello.
    assert_eq!(entry["requested_server_name"], "secure.example", "{line}");
    assert_eq!(
        entry["downstream_local_address"],
        format!("127.0.0.1:{}", server.port),
        "{line}"
    );
}

/// TLS to a destination no ServiceEntry describes passes through untouched, and the access
/// log still names the server its ClientHello asked for, as Istio's TLS inspector reads it.
#[test]
fn passthrough_tls_is_logged_with_its_server_name() {
    if !ebpf_available("egress_passthrough_sni") {
        return;
    }
    let certs = certificates(
        &std::env::temp_dir().join("meshd-test-egress-passthrough-sni"),
        "secure.example",
    );
    let server = TlsServer::start(&certs);
    let d = start("egress-passthrough-sni", 330, "");
    let url = format!("https://secure.example:{}/", server.port);
    let resolve = format!("secure.example:{}:127.0.0.1", server.port);
    // The server's certificate is not the point: `-k`.
    let out = curl(
        &d,
        &["--resolve", &resolve, "-k", "-w", "\n%{http_code}", &url],
    );
    assert!(
        out.ends_with("\n200"),
        "the client's own TLS, end to end: {out}"
    );
    let line = support::eventually(std::time::Duration::from_secs(5), || {
        (d.log_text().lines())
            .find(|l| l.contains(r#""protocol":"tcp""#))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no TCP line:\n{}", d.log_text()));
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["requested_server_name"], "secure.example", "{line}");
    assert_eq!(entry["upstream_cluster"], "PassthroughCluster", "{line}");

    // A ClientHello sent in two parts, 30 ms apart (as a hello larger than a packet may
    // arrive): its rest is waited on, and the name logged.
    let script = format!(
        "import socket, ssl, time\n\
         ctx = ssl.create_default_context()\n\
         ctx.check_hostname = False\n\
         ctx.verify_mode = ssl.CERT_NONE\n\
         out = ssl.MemoryBIO()\n\
         tls = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname='split.example')\n\
         try:\n    tls.do_handshake()\nexcept ssl.SSLWantReadError:\n    pass\n\
         hello = out.read()\n\
         s = socket.create_connection(('127.0.0.1', {}), timeout=5)\n\
         s.sendall(hello[:20])\n\
         time.sleep(0.03)\n\
         s.sendall(hello[20:])\n\
         print(len(s.recv(100)) > 0)\n",
        server.port
    );
    let out = d
        .exec("default/productpage", &["python3", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "True",
        "the server answered the hello: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let named = support::eventually(std::time::Duration::from_secs(5), || {
        (d.log_text().lines())
            .find(|l| l.contains(r#""requested_server_name":"split.example""#))
            .map(str::to_string)
    });
    assert!(named.is_some(), "{}", d.log_text());
}

/// A route (and a mirror) from one host to DNS ServiceEntries without endpoints: as Envoy's DNS
/// cluster does, meshd resolves the ServiceEntries' hosts and sends the request there. meshd
/// runs with a hosts file of its own, so the names resolve to loopback addresses.
#[test]
fn a_route_to_a_dns_service_entry_without_endpoints_goes_to_the_address_its_host_resolves_to() {
    if !ebpf_available("egress_dns_route") {
        return;
    }
    let api = HttpBackend::start("127.0.0.61:0");
    let shadow = HttpBackend::start("127.0.0.62:0");
    let entry = |name: &str, host: &str, port: u16| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]\n  resolution: DNS\n---\n"
        )
    };
    let yaml = format!(
        "{}{}{}",
        entry("partner", "api.partner.example", api.addr.port()),
        entry("audit", "audit.partner.example", shadow.addr.port()),
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: front
spec:
  hosts:
  - front.example
  http:
  - route:
    - destination:
        host: api.partner.example
    mirror:
      host: audit.partner.example
"#
    );
    let dir = support::mesh::config_dir("egress-dns-route", &yaml);
    let d = Daemon::start_with_hosts(
        "egress-dns-route",
        206,
        &["--config", dir.to_str().unwrap()],
        "127.0.0.1 localhost\n127.0.0.61 api.partner.example\n127.0.0.62 audit.partner.example\n",
    );
    let out = curl(
        &d,
        &[
            "--resolve",
            "front.example:80:127.0.0.60",
            "-w",
            "\n%{http_code}",
            "http://front.example/whoami",
        ],
    );
    assert!(out.ends_with("\n200"), "{out}");
    assert_eq!(api.requests(), 1, "the route's backend answered: {out}");
    assert!(out.contains("\"host\":\"front.example\""), "{out}");
    assert!(
        support::eventually(std::time::Duration::from_secs(5), || {
            (shadow.shadow_requests() == 1).then_some(())
        })
        .is_some(),
        "the mirror reached the other host's address"
    );
}

/// A DNS ServiceEntry with a VIP in `addresses`: as Envoy's DNS cluster, meshd sends what
/// reaches the VIP to the addresses the host resolves to (the VIP only picks the service),
/// on an HTTP port and on a TCP one.
#[test]
fn a_dns_service_entry_behind_a_vip_goes_to_the_address_its_host_resolves_to() {
    if !ebpf_available("egress_dns_vip") {
        return;
    }
    let api = HttpBackend::start("127.0.0.65:0");
    let port = api.addr.port();
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: db
spec:
  hosts: [db.partner.example]
  addresses: [127.0.0.66]
  ports:
  - {{number: 80, name: http, protocol: HTTP, targetPort: {port}}}
  - {{number: 81, name: tcp, protocol: TCP, targetPort: {port}}}
  resolution: DNS
  location: MESH_EXTERNAL
"#
    );
    let dir = support::mesh::config_dir("egress-dns-vip", &yaml);
    let d = Daemon::start_with_hosts(
        "egress-dns-vip",
        319,
        &["--config", dir.to_str().unwrap()],
        "127.0.0.1 localhost\n127.0.0.65 db.partner.example\n",
    );
    for service_port in [80, 81] {
        let out = curl(
            &d,
            &[
                "--resolve",
                &format!("db.partner.example:{service_port}:127.0.0.66"),
                "-w",
                "\n%{http_code}",
                &format!("http://db.partner.example:{service_port}/whoami"),
            ],
        );
        assert!(out.ends_with("\n200"), "port {service_port}: {out}");
    }
    assert_eq!(api.requests(), 2, "both reached the resolved address");
}

/// What each DNS answer does to the addresses of a DNS ServiceEntry's host, as Envoy's DNS
/// cluster treats it: a name the server says does not exist (NXDOMAIN) or has no address
/// (NODATA) loses its addresses (503, no healthy upstream), and a server that fails
/// (SERVFAIL) leaves the last ones in use. Each answer is read on a reload (SIGHUP), which
/// resolves the names again, from a DNS server on loopback that is meshd's only resolver.
#[test]
fn a_name_that_does_not_resolve_loses_its_addresses_and_one_without_an_answer_keeps_them() {
    if !ebpf_available("egress_dns_answers") {
        return;
    }
    let api = HttpBackend::start("127.0.0.69:0");
    let dns = support::dns::DnsServer::start("egress-dns-answers", "127.0.0.77", "127.0.0.69");
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
spec:
  hosts: [api.dns.test]
  addresses: [127.0.0.78]
  ports:
  - {{number: 80, name: http, protocol: HTTP, targetPort: {port}}}
  resolution: DNS
  location: MESH_EXTERNAL
"#,
        port = api.addr.port()
    );
    let dir = support::mesh::config_dir("egress-dns-answers", &yaml);
    let d = Daemon::start_with_resolver(
        "egress-dns-answers",
        332,
        &["--config", dir.to_str().unwrap()],
        "127.0.0.1 localhost\n",
        "127.0.0.77",
    );
    let get = || {
        curl(
            &d,
            &[
                "--resolve",
                "api.dns.test:80:127.0.0.78",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://api.dns.test/",
            ],
        )
    };
    // Resolves the names again, and waits until the reload ends with `result`.
    let reload = |result: &str| {
        let series = format!("meshd_config_reload_total{{result=\"{result}\"}}");
        let before = d.metric(&series);
        d.signal(libc::SIGHUP);
        let done = support::eventually(Duration::from_secs(10), || {
            (d.metric(&series) > before).then_some(())
        });
        assert!(done.is_some(), "no reload ended {result}: {}", d.log_text());
    };
    assert_eq!(get(), "200", "the address the server gave");
    dns.set("SERVFAIL");
    reload("unchanged");
    assert_eq!(get(), "200", "no answer: the last address is kept");
    assert!(d.log_shows("it keeps its last addresses"));
    dns.set("NXDOMAIN");
    reload("success");
    assert_eq!(get(), "503", "no such name: no address");
    dns.set("127.0.0.69");
    reload("success");
    assert_eq!(get(), "200", "the name is back");
    dns.set("NODATA");
    reload("success");
    assert_eq!(get(), "503", "no address for the name");
    assert_eq!(api.requests(), 3);
    assert!(d.log_text().contains("flags=UH"), "{}", d.log_text());
}

/// Two ServiceEntries of one host in one namespace are merged, but each entry's endpoints
/// serve only its own ports, as in Istio: the `resolution: NONE` entry's port goes where the
/// client dialled, the STATIC entry's port to its endpoint.
#[test]
fn entries_of_one_host_keep_their_endpoints_to_their_own_ports() {
    if !ebpf_available("egress_merged_entries") {
        return;
    }
    let dialled = HttpBackend::start("127.0.0.67:0");
    let endpoint = HttpBackend::start("127.0.0.1:0");
    let (a, b) = (dialled.addr.port(), endpoint.addr.port());
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: mix-a}}
spec:
  hosts: [mix.partner.example]
  ports: [{{number: {a}, name: http, protocol: HTTP}}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: mix-b}}
spec:
  hosts: [mix.partner.example]
  ports: [{{number: {b}, name: http-alt, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
"#
    );
    let d = start("egress-merged-entries", 323, &yaml);
    for (port, at) in [(a, "127.0.0.67"), (b, "127.0.0.68")] {
        let out = curl(
            &d,
            &[
                "--resolve",
                &format!("mix.partner.example:{port}:{at}"),
                "-w",
                "\n%{http_code}",
                &format!("http://mix.partner.example:{port}/whoami"),
            ],
        );
        assert!(out.ends_with("\n200"), "port {port}: {out}");
    }
    assert_eq!(
        dialled.requests(),
        1,
        "mix-a's port went where the client dialled"
    );
    assert_eq!(endpoint.requests(), 1, "mix-b's port went to its endpoint");
}

#[test]
fn a_route_to_a_wildcard_service_entry_goes_where_the_client_dialled() {
    if !ebpf_available("egress_wildcard_route") {
        return;
    }
    let api = HttpBackend::start("127.0.0.63:0");
    let port = api.addr.port();
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: wild
spec:
  hosts: ["*.wild.example"]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: NONE
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: wild
spec:
  hosts: ["*.wild.example"]
  http:
  - headers:
      response:
        set: {{x-routed: wild}}
    route:
    - destination:
        host: "*.wild.example"
"#
    );
    let d = start("egress-wildcard-route", 262, &yaml);
    let out = curl(
        &d,
        &[
            "-i",
            "--resolve",
            &format!("api.wild.example:{port}:127.0.0.63"),
            &format!("http://api.wild.example:{port}/whoami"),
        ],
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.to_ascii_lowercase().contains("x-routed: wild"), "{out}");
    assert_eq!(api.requests(), 1, "{out}");
}

/// Without a VirtualService, a request whose Host a wildcard ServiceEntry with STATIC
/// endpoints covers goes to those endpoints, as Istio's `*.suffix` virtual host routes it, not
/// to the address the client dialled.
#[test]
fn a_wildcard_service_entry_with_endpoints_takes_the_hosts_it_covers() {
    if !ebpf_available("egress_wildcard_static") {
        return;
    }
    let api = HttpBackend::start("127.0.0.64:0");
    let port = api.addr.port();
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: wc
spec:
  hosts: ["*.wc.example"]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.64}}]
"#
    );
    let d = start("egress-wildcard-static", 289, &yaml);
    // Dialled at an address nothing listens on: only the entry's endpoint can answer.
    let out = curl(
        &d,
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--resolve",
            &format!("foo.wc.example:{port}:127.0.0.99"),
            &format!("http://foo.wc.example:{port}/whoami"),
        ],
    );
    assert_eq!(out.trim(), "200", "{}", d.log_text());
    assert_eq!(api.requests(), 1);
}

/// A ServiceEntry for a TCP service `db.example` at `vip` (`resolution: STATIC`, its one endpoint
/// the TLS server on `port`), or without endpoints at the server's own address
/// (`resolution: NONE`), and its DestinationRule with the `tls` block given.
fn tcp_service(vip: &str, port: u16, static_endpoint: bool, tls: &str) -> String {
    let (resolution, endpoints, number) = match static_endpoint {
        true => (
            "STATIC",
            format!("  endpoints:\n  - address: 127.0.0.1\n    ports: {{tcp: {port}}}\n"),
            7000,
        ),
        false => ("NONE", String::new(), port),
    };
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: db
spec:
  hosts: [db.example]
  addresses: [{vip}]
  ports:
  - {{number: {number}, name: tcp, protocol: TCP}}
  resolution: {resolution}
  location: MESH_EXTERNAL
{endpoints}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: db
spec:
  host: db.example
  trafficPolicy:
    tls:
{tls}"#
    )
}

/// Sends a line over plain TCP from a captured workload; what came back (empty when the
/// connection closed or nothing came within two seconds).
fn exchange(d: &support::Daemon, addr: &str, port: u16) -> String {
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('{addr}', {port}), timeout=2)\n\
         s.sendall(b'plain to meshd\\n')\n\
         try:\n    print(s.recv(200).decode(errors='replace'))\n\
         except OSError:\n    pass\n"
    );
    let out = d
        .exec("default/app", &["python3", "-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// DestinationRule `tls` on a TCP service (a database that requires TLS, say): the client
/// speaks plain TCP and meshd originates TLS, as Envoy's TCP proxy does with the cluster's TLS
/// transport socket. The server is `openssl s_server -rev`, which answers each line reversed.
/// The name verified is the service's host; a server checked against another CA is refused.
#[test]
fn opaque_tcp_goes_out_as_tls_under_a_simple_destination_rule() {
    if !ebpf_available("egress_tcp_tls") {
        return;
    }
    let certs = certificates(
        &std::env::temp_dir().join("meshd-test-egress-tcp-certs"),
        "db.example",
    );
    let server = TlsServer::serving(&certs, "-rev");
    let simple = format!(
        "      mode: SIMPLE\n      caCertificates: {}\n",
        certs.join("ca.pem").display()
    );
    let d = start(
        "egress-tcp-tls",
        228,
        &tcp_service("127.0.0.56", server.port, true, &simple),
    );
    assert_eq!(
        exchange(&d, "127.0.0.56", 7000),
        "dhsem ot nialp",
        "{}",
        d.log_text()
    );
    // The upstream TCP socket under meshd's TLS keeps the kernel's counters: its RTT is
    // reported when the connection closes.
    let rtt = support::eventually(Duration::from_secs(5), || {
        let metrics = d.get("/metrics");
        (metrics.lines())
            .any(|l| {
                l.starts_with("meshd_tcp_rtt_microseconds_count{")
                    && l.contains(r#"destination_service="db.example""#)
            })
            .then_some(())
    });
    assert!(rtt.is_some(), "{}", d.get("/metrics"));
    // A client that speaks TLS itself is not wrapped again: its own TLS reaches the server.
    let script = "import socket, ssl\n\
         c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE\n\
         s = c.wrap_socket(socket.create_connection(('127.0.0.56', 7000), timeout=5))\n\
         s.sendall(b'tls of its own\\n'); print(s.recv(200).decode())\n";
    let out = d
        .exec("default/app", &["python3", "-c", script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nwo sti fo slt",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    drop(d);

    // A ServiceEntry without endpoints (`resolution: NONE`): the connection goes where the
    // client dialled, under the service's DestinationRule all the same.
    let d = start(
        "egress-tcp-tls-none",
        229,
        &tcp_service("127.0.0.1", server.port, false, &simple),
    );
    assert_eq!(
        exchange(&d, "127.0.0.1", server.port),
        "dhsem ot nialp",
        "{}",
        d.log_text()
    );
    drop(d);

    // Verified against another CA: the handshake fails and the client's connection closes,
    // with the reason and flag UF in the access log.
    let other = certificates(
        &std::env::temp_dir().join("meshd-test-egress-tcp-other-ca"),
        "db.example",
    );
    let wrong = format!(
        "      mode: SIMPLE\n      caCertificates: {}\n",
        other.join("ca.pem").display()
    );
    let d = start(
        "egress-tcp-tls-bad-ca",
        230,
        &tcp_service("127.0.0.56", server.port, true, &wrong),
    );
    assert_eq!(exchange(&d, "127.0.0.56", 7000), "");
    let logged = support::eventually(Duration::from_secs(5), || {
        let log = d.log_text();
        log.contains(r#""response_flags":"UF""#).then_some(log)
    });
    let log = logged.unwrap_or_else(|| d.log_text());
    assert!(
        log.contains(r#""response_flags":"UF""#) && log.contains("TLS with 127.0.0.1"),
        "{log}"
    );
    drop(d);

    // A server that accepts the connection and never answers the handshake: the connect
    // timeout bounds the handshake too, and the client's connection is closed.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bounded = simple.clone() + "    connectionPool: {tcp: {connectTimeout: 500ms}}\n";
    let d = start(
        "egress-tcp-tls-silent",
        241,
        &tcp_service(
            "127.0.0.56",
            silent.local_addr().unwrap().port(),
            true,
            &bounded,
        ),
    );
    assert_eq!(exchange(&d, "127.0.0.56", 7000), "");
    let logged = support::eventually(Duration::from_secs(5), || {
        let log = d.log_text();
        log.contains("no handshake within the connect timeout (500ms)")
            .then_some(())
    });
    assert!(logged.is_some(), "{}", d.log_text());
}

/// `proxyProtocol` with TLS origination, as Envoy's upstream transport sockets stack them:
/// the PROXY protocol header first, then the TLS handshake, then HTTP/1.1 or (with
/// `h2UpgradePolicy: UPGRADE`) HTTP/2 inside it. nginx reads the header on a `ssl http2
/// proxy_protocol` listener and answers with the client it announced.
#[test]
fn a_proxy_protocol_header_goes_before_originated_tls() {
    if !ebpf_available("egress_tls_proxy_protocol") {
        return;
    }
    let certs = certificates(
        &std::env::temp_dir().join("meshd-test-egress-pp-certs"),
        "pp.example",
    );
    let port = support::ports(240).0 + 5;
    let _nginx = support::nginx::Nginx::proxy_protocol_tls("egress-pp", port, &certs);
    let service = |name: &str, vip: &str, pool: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}.example]\n  addresses: [{vip}]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}}}\nspec:\n  host: {name}.example\n  trafficPolicy:\n    proxyProtocol: {{version: V2}}\n{pool}    tls:\n      mode: SIMPLE\n      sni: pp.example\n      caCertificates: {}\n---\n",
            certs.join("ca.pem").display()
        )
    };
    let yaml = service("pp", "127.0.0.57", "")
        + &service(
            "pp2",
            "127.0.0.58",
            "    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}\n",
        );
    let d = start("egress-tls-pp", 240, &yaml);
    let get = |name: &str, vip: &str| {
        curl(
            &d,
            &[
                "--resolve",
                &format!("{name}.example:80:{vip}"),
                "-w",
                "%{local_port}",
                &format!("http://{name}.example/"),
            ],
        )
    };
    for (name, vip, protocol) in [
        ("pp", "127.0.0.57", "HTTP/1.1"),
        ("pp2", "127.0.0.58", "HTTP/2.0"),
    ] {
        let out = get(name, vip);
        let (answer, local_port) = out.trim().rsplit_once('\n').unwrap_or_default();
        assert_eq!(
            answer.split(" #").next().unwrap_or_default(),
            format!("127.0.0.1:{local_port}>{vip}:80"),
            "{out}\n{}",
            d.log_text()
        );
        // `#N TLSVERSION PROTOCOL`; nginx 1.22 offers TLS 1.2 at most by default.
        let fields: Vec<&str> = answer.split(' ').collect();
        assert!(
            fields.len() == 4 && fields[2].starts_with("TLSv1.") && fields[3] == protocol,
            "{out}"
        );
    }
}

/// A wildcard ServiceEntry without endpoints on port 9443 (`targetPort` nginx's TLS port),
/// and a DestinationRule originating TLS verified against the CA of `certs`.
fn vh_policies(port: u16, certs: &Path) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: vh
spec:
  hosts: ["*.vh.example"]
  ports: [{{number: 9443, name: http, protocol: HTTP, targetPort: {port}}}]
  resolution: NONE
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: vh
spec:
  host: "*.vh.example"
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {ca}}}
"#,
        ca = certs.join("ca.pem").display()
    )
}

/// A VirtualService for every host of `vh_policies`.
const VH_ROUTE: &str = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vh
spec:
  hosts: ["*.vh.example"]
  http:
  - route:
    - destination:
        host: "*.vh.example"
"#;

/// A plain HTTP GET from the managed client to `name`:9443 (dialled at 127.0.0.1): the body,
/// then the status on a line of its own.
fn vh_get(d: &Daemon, name: &str) -> String {
    curl(
        d,
        &[
            "-s",
            "-w",
            "\n%{http_code}",
            "--resolve",
            &format!("{name}:9443:127.0.0.1"),
            &format!("http://{name}:9443/"),
        ],
    )
}

/// Without a VirtualService, a request whose Host a wildcard ServiceEntry without endpoints
/// covers takes that service's default route, as Istio's `*.suffix` virtual host does: to the
/// address dialled, on the port's `targetPort`, under its DestinationRule (TLS originated).
#[test]
fn a_wildcard_service_entry_without_endpoints_applies_its_destination_rule() {
    if !ebpf_available("egress_wildcard_none_tls") {
        return;
    }
    let certs = certificates(
        &std::env::temp_dir().join("meshd-test-egress-wildcard-none-certs"),
        "api.vh.example",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = support::nginx::Nginx::tls("egress-wildcard-none", port, &certs);
    let d = start("egress-wildcard-none", 322, &vh_policies(port, &certs));
    let out = vh_get(&d, "api.vh.example");
    assert!(out.ends_with("\n200"), "{out}");
    assert!(
        out.starts_with("api.vh.example api.vh.example #"),
        "TLS to the target port, verified for the name: {out}"
    );
    let logged = support::eventually(Duration::from_secs(5), || {
        d.log_text()
            .contains(r#""upstream_cluster":"outbound|9443||*.vh.example""#)
            .then_some(())
    });
    assert!(logged.is_some(), "{}", d.log_text());
    // No VirtualService: the service's route, which Istio names `default`.
    assert!(
        d.log_text().contains(r#""route_name":"default""#),
        "{}",
        d.log_text()
    );
}

/// A connection meshd opened with TLS for one server name serves no request for another, as
/// Envoy pools connections by the SNI it sends: under a wildcard ServiceEntry whose
/// DestinationRule originates TLS, a server whose certificate names only `good.vh.example`
/// never answers a request for `bad.vh.example`, even after a request for the good name left
/// a verified connection idle in the pool.
#[test]
fn a_tls_connection_verified_for_one_name_is_not_reused_for_another() {
    if !ebpf_available("egress_tls_per_name") {
        return;
    }
    let certs = certificates(
        &std::env::temp_dir().join("meshd-test-egress-per-name-certs"),
        "good.vh.example",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = support::nginx::Nginx::tls("egress-tls-per-name", port, &certs);
    let yaml = vh_policies(port, &certs) + VH_ROUTE;
    let d = start("egress-tls-per-name", 318, &yaml);
    let get = |name: &str| vh_get(&d, name);
    let out = get("bad.vh.example");
    assert!(out.ends_with("\n503"), "not verified for the name: {out}");
    let good = get("good.vh.example");
    assert!(good.ends_with("\n200"), "{good}");
    assert!(
        good.starts_with("good.vh.example good.vh.example #"),
        "{good}"
    );
    // The good name's connection is idle in the pool now; the bad name still gets its own,
    // which fails verification.
    let out = get("bad.vh.example");
    assert!(
        out.ends_with("\n503"),
        "a connection verified for good.vh.example served it: {out}"
    );
    // The good name's connection is still pooled for the good name.
    let again = get("good.vh.example");
    assert_eq!(
        again, good,
        "the same connection (nginx's number) served both"
    );
}

/// Istio's `outboundTrafficPolicy: REGISTRY_ONLY` (`--outbound-traffic-policy REGISTRY_ONLY`):
/// what no ServiceEntry describes goes to the BlackHoleCluster, an HTTP request answered 502
/// and an opaque connection reset, neither reaching its destination, and a VirtualService
/// that routes to an undescribed host gets 503 NC; a registered service is reached as before.
#[test]
fn registry_only_blocks_destinations_no_service_entry_describes() {
    if !ebpf_available("egress_registry_only") {
        return;
    }
    let registered = HttpBackend::start("127.0.0.71:0");
    let unregistered = HttpBackend::start("127.0.0.72:0");
    let echo = support::backend::Backend::echo("127.0.0.73:0");
    let port = registered.addr.port();
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner}}
spec:
  hosts: [api.partner.example]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: NONE
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: unregistered-route}}
spec:
  hosts: [routed.example]
  http:
  - route:
    - destination: {{host: routed.example}}
"#
    );
    let dir = support::mesh::config_dir("egress-registry-only", &yaml);
    let d = Daemon::start(
        "egress-registry-only",
        325,
        &[
            "--config",
            dir.to_str().unwrap(),
            "--outbound-traffic-policy",
            "REGISTRY_ONLY",
        ],
    );
    let get = |host: &str, addr: std::net::SocketAddr| {
        curl(
            &d,
            &[
                "--resolve",
                &format!("{host}:{}:{}", addr.port(), addr.ip()),
                "-w",
                "\n%{http_code}",
                &format!("http://{host}:{}/whoami", addr.port()),
            ],
        )
    };
    let out = get("api.partner.example", registered.addr);
    assert!(out.ends_with("\n200"), "{out}");
    let out = get("elsewhere.example", unregistered.addr);
    assert!(out.ends_with("\n502"), "{out}");
    // A VirtualService's destination no ServiceEntry describes has no cluster: 503 NC, not
    // the address dialled.
    let out = get("routed.example", unregistered.addr);
    assert!(out.ends_with("\n503"), "{out}");
    let nc = support::eventually(Duration::from_secs(5), || {
        (d.log_text().lines())
            .any(|l| l.contains("routed.example") && l.contains(r#""response_flags":"NC""#))
            .then_some(())
    });
    assert!(nc.is_some(), "logged with flag NC: {}", d.log_text());
    assert_eq!(
        unregistered.requests(),
        0,
        "the blocked request went nowhere"
    );
    let addr = echo.addr.to_string();
    let out = d.client(
        "default/productpage",
        &["echo", "--addr", &addr, "--bytes", "10"],
    );
    assert!(!out.status.success(), "the connection was refused: {out:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(echo.accepted(), 0, "the blocked connection went nowhere");
    let lines = support::eventually(Duration::from_secs(5), || {
        let text = d.log_text();
        let blocked = (text.lines())
            .filter(|l| l.contains(r#""upstream_cluster":"BlackHoleCluster""#))
            .count();
        (blocked == 2).then_some(text)
    });
    assert!(
        lines.is_some(),
        "both logged under BlackHoleCluster: {}",
        d.log_text()
    );
    // The HTTP request's line names the route as Istio does under REGISTRY_ONLY.
    assert!(
        d.log_text().contains(r#""route_name":"block_all""#),
        "{}",
        d.log_text()
    );
    let metrics = d.get("/metrics");
    let name = [r#"destination_service_name="BlackHoleCluster""#];
    assert!(
        support::has_series(&metrics, "istio_requests_total", &name, Some("1")),
        "{metrics}"
    );
}

/// Connections meshd opened under one DestinationRule's `tls` block never serve a client that
/// another block applies to, even for the same server name, as Envoy's pools are per cluster
/// and transport socket. Here productpage's own DestinationRule (a `workloadSelector`) trusts
/// the server's CA, and the rule for everyone else trusts another CA: after productpage's
/// request leaves its verified connection idle, ratings' request still opens its own, which
/// fails verification.
#[test]
fn a_tls_connection_is_not_shared_between_destination_rules_of_one_host() {
    if !ebpf_available("egress_tls_per_block") {
        return;
    }
    let dir = std::env::temp_dir().join("meshd-test-egress-per-block-certs");
    let certs = certificates(&dir.join("server"), "secure.example");
    let other_ca = certificates(&dir.join("other"), "secure.example");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = support::nginx::Nginx::tls("egress-tls-per-block", port, &certs);
    let for_productpage = format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: secure-example-for-productpage
spec:
  host: secure.example
  workloadSelector:
    matchLabels:
      app: productpage
  trafficPolicy:
    portLevelSettings:
    - port:
        number: 443
      tls:
{tls}---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: productpage
spec:
  address: 127.0.0.1
  labels:
    app: productpage
"#,
        tls = simple_tls(&certs.join("ca.pem"))
    );
    let yaml = policies(port, &simple_tls(&other_ca.join("ca.pem"))) + &for_productpage;
    let d = start("egress-tls-per-block", 331, &yaml);
    let first = get_as(&d, "default/productpage");
    assert!(first.ends_with("\n200"), "productpage's rule: {first}");
    assert!(
        first.starts_with("secure.example secure.example #"),
        "{first}"
    );
    let out = get_as(&d, "default/ratings");
    assert!(
        out.ends_with("\n503"),
        "a connection productpage's rule verified served ratings: {out}"
    );
    let again = get_as(&d, "default/productpage");
    assert_eq!(
        again, first,
        "productpage's connection (nginx's number) is reused"
    );
}
