//! The value matchers on their own: wildcards, IP blocks, path templates and normalization.

use super::super::matchers::{IpBlock, PathPattern, StrPattern, normalize_path};

#[test]
fn string_patterns() {
    use StrPattern::*;
    let cases = [
        ("abc", Exact("abc".into())),
        ("abc*", Prefix("abc".into())),
        ("*abc", Suffix("abc".into())),
        ("*", Presence),
        ("*abc*", Suffix("abc*".into())),
        ("", Exact(String::new())),
    ];
    for (s, p) in cases {
        assert_eq!(StrPattern::parse(s), p, "{s}");
    }
    assert!(StrPattern::parse("*").matches("x"));
    assert!(!StrPattern::parse("*").matches(""));
    assert!(StrPattern::parse("ab*").matches("ab"));
    assert!(!StrPattern::parse("ab*").matches("AB"));
    assert!(StrPattern::parse("ab*").matches_ignore_case("ABc"));
    assert!(StrPattern::parse("*.Example.com").matches_ignore_case("api.EXAMPLE.com"));
    assert!(!StrPattern::parse("*.example.com").matches_ignore_case("com"));
    assert!(StrPattern::parse("Example.com").matches_ignore_case("example.COM"));
}

#[test]
fn ip_blocks() {
    let yes = [
        ("10.0.0.0/8", "10.255.0.1"),
        ("10.0.0.1/8", "10.9.9.9"),
        ("10.0.0.1", "10.0.0.1"),
        ("0.0.0.0/0", "1.2.3.4"),
        ("10.0.0.0/8", "::ffff:10.1.1.1"),
        ("::ffff:10.0.0.0/104", "10.1.1.1"),
        ("2001:db8::/32", "2001:db8:ffff::1"),
        ("::/0", "fe80::1"),
        ("fe80::1", "fe80::1"),
        ("fe80::1/128", "fe80::1"),
    ];
    for (block, ip) in yes {
        let b = IpBlock::parse(block).unwrap();
        assert!(b.contains(ip.parse().unwrap()), "{block} {ip}");
    }
    let no = [
        ("10.0.0.0/8", "11.0.0.1"),
        ("10.0.0.1", "10.0.0.2"),
        ("10.0.0.0/31", "10.0.0.2"),
        ("0.0.0.0/0", "::1"),
        ("::/0", "1.2.3.4"),
        ("2001:db8::/33", "2001:db8:8000::1"),
    ];
    for (block, ip) in no {
        let b = IpBlock::parse(block).unwrap();
        assert!(!b.contains(ip.parse().unwrap()), "{block} {ip}");
    }
    for bad in [
        "",
        "x",
        "10.0.0.0/33",
        "::/129",
        "10.0.0.1/",
        "10.0.0/8",
        "10.0.0.0/-1",
    ] {
        assert_eq!(IpBlock::parse(bad), None, "{bad}");
    }
}

#[test]
fn path_templates() {
    let cases = [
        ("/foo/{*}", "/foo/bar", true),
        ("/foo/{*}", "/foo/bar/baz", false),
        ("/foo/{*}", "/foo/", false),
        ("/foo/{**}", "/foo/bar/baz", true),
        ("/foo/{**}", "/foo/", true),
        ("/foo/{*}/bar/{**}", "/foo/buzz/bar/", true),
        ("/foo/{*}/bar/{**}", "/foo/buzz/bar/baz", true),
        ("/foo/{*}/bar/{**}", "/foo/a/b/bar/baz", false),
        ("/a.b/{*}", "/aXb/c", false),
        // `{**}` then a final `/`: the path must end with it.
        ("/a/{**}/", "/a/b/c/", true),
        ("/a/{**}/", "/a/b/c", false),
        ("/a/{**}/", "/a/", false),
        ("/{*}", "/", false),
        ("/{*}", "/é", true),
        ("/foo/{*}/x", "/foo/bar/x", true),
        ("/foo/{*}/x", "/foo/bar/x/", false),
    ];
    for (pattern, path, expected) in cases {
        let p = PathPattern::parse(pattern).unwrap();
        assert_eq!(p.matches(path), expected, "{pattern} {path}");
    }
    for bad in [
        "/*/baz/{*}",
        "/{x}/{*}",
        "/{**}/{*}",
        "/a{*}/b",
        "/{*}b",
        "/{*}}",
        "{*}/a",
    ] {
        assert!(PathPattern::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn path_normalization() {
    let cases = [
        ("/a/b", "/a/b"),
        ("/a/b?x=1", "/a/b"),
        ("/a/b#frag", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../admin", "/admin"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/..", "/"),
        ("//a/../b", "//b"),
        // As Envoy's canonicalizer: an escaped dot is a dot, a backslash a slash.
        ("/a/%2e%2e/b", "/b"),
        ("/a/.%2E/b", "/b"),
        ("/a/%2e/b", "/a/b"),
        ("/a\\..\\admin", "/admin"),
        ("/a/%2e%2e%2e/b", "/a/%2e%2e%2e/b"),
        ("/a/%2fb", "/a/%2fb"),
        ("/a/..?q=/../x", "/"),
        // As Envoy's: a dot segment with parameters is a dot segment, parameters and all
        // (servers that honour `;` parameters read `..;x` as `..`).
        ("/xyz/..;foo=bar/abc", "/abc"),
        ("/..;foo=bar/abc", "/abc"),
        ("/xyz/..;foo=bar", "/"),
        ("/xyz/.;foo=bar/abc", "/xyz/abc"),
        ("/xyz/.;foo=bar", "/xyz/"),
        ("/xyz/..;foo=bar/.;v1=2,v2=3/abc", "/abc"),
        ("/public/%2e%2e;x/admin", "/admin"),
        ("/a;x/b", "/a;x/b"),
        ("/a/...;x/b", "/a/...;x/b"),
    ];
    for (input, expected) in cases {
        assert_eq!(normalize_path(input), expected, "{input}");
    }
}

#[test]
fn namespace_wildcards_stand_anywhere_as_istiod_builds_them() {
    let m = |p: &str, v: &str| StrPattern::parse_namespace(p).matches(v);
    assert!(m("*o*", "foo") && m("*o*", "o") && !m("*o*", "bar"));
    assert!(m("b*r", "bar") && m("b*r", "br") && !m("b*r", "bars"));
    assert!(m("a*b*c", "axxbyyc") && !m("a*b*c", "acb"));
    assert!(m("prod-*", "prod-eu") && m("*-eu", "prod-eu") && m("*", "x"));
    assert!(m("foo", "foo") && !m("foo", "foo2"));
}
