//! RE2's regular expressions, the dialect Envoy matches with and Istio validates, run on the
//! `regex` crate: a pattern is checked against RE2's rules and rewritten where the two dialects
//! read the same text differently (ASCII-only `\d`, `\w`, `\s` and `\b`, `\Q...\E`, a `[`, `&&`
//! or `~~` inside a class, octal escapes, `\<` and `\>`).

use regex::{Regex, RegexBuilder};

use super::limits::MAX_REGEX_BYTES;

/// RE2's largest repetition count.
const MAX_REPEAT: u32 = 1000;

/// Compiles an RE2 pattern; `whole` anchors it so it must match the whole value (RE2's full
/// match, as Envoy's `safe_regex` matches). The error says why, in a few words.
pub fn compile(pattern: &str, whole: bool) -> Result<Regex, String> {
    let translated = translate(pattern)?;
    let source = match whole {
        true => format!("^(?:{translated})$"),
        false => translated,
    };
    RegexBuilder::new(&source)
        .size_limit(MAX_REGEX_BYTES)
        .build()
        .map_err(|e| match e {
            regex::Error::Syntax(msg) => msg
                .lines()
                .last()
                .unwrap_or("syntax error")
                .trim_start_matches("error: ")
                .to_string(),
            regex::Error::CompiledTooBig(_) => "too large once compiled".into(),
            _ => e.to_string(),
        })
}

/// Whether the last thing written can take a repetition operator, and whether it is one.
#[derive(Clone, Copy, PartialEq)]
enum Last {
    Atom,
    Repeat,
    LazyRepeat,
}

/// The pattern in the `regex` crate's syntax, with the meaning RE2 gives it.
fn translate(pattern: &str) -> Result<String, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut i = 0;
    let mut last = Last::Atom;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '\\' => {
                let (text, used) = escape(&chars[i..], false)?;
                out.push_str(&text);
                i += used;
                last = Last::Atom;
            }
            '[' => {
                i += class(&chars[i..], &mut out)?;
                last = Last::Atom;
            }
            '(' => {
                out.push('(');
                if chars.get(i) == Some(&'?') {
                    i += group_flags(&chars[i..], &mut out)?;
                }
                last = Last::Atom;
            }
            '*' | '+' | '?' => {
                last = repeat(last, c == '?')?;
                out.push(c);
            }
            '{' => match counted(&chars[i..])? {
                Some(used) => {
                    last = repeat(last, false)?;
                    out.push('{');
                    out.extend(&chars[i..i + used]);
                    i += used;
                }
                // Not a repetition: RE2 reads a literal brace.
                None => {
                    out.push_str("\\{");
                    last = Last::Atom;
                }
            },
            '}' => {
                out.push_str("\\}");
                last = Last::Atom;
            }
            c => {
                out.push(c);
                last = Last::Atom;
            }
        }
    }
    Ok(out)
}

/// What a repetition operator after `last` leaves; RE2 refuses one repetition on another
/// (`a**`, `a++`), except the `?` that makes a repetition lazy (`a*?`).
fn repeat(last: Last, is_question: bool) -> Result<Last, String> {
    match last {
        Last::Atom => Ok(Last::Repeat),
        Last::Repeat if is_question => Ok(Last::LazyRepeat),
        _ => Err("bad repetition operator: a repetition of a repetition".into()),
    }
}

fn number(s: &str) -> Option<&str> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
}

/// The length of `{n}`, `{n,}` or `{n,m}` after the `{`, checked against RE2's limit of 1000;
/// `None` when the brace does not open one.
fn counted(rest: &[char]) -> Result<Option<usize>, String> {
    let Some(end) = rest.iter().position(|&c| c == '}') else {
        return Ok(None);
    };
    let body: String = rest[..end].iter().collect();
    let (min, max) = match body.split_once(',') {
        Some((min, max)) => (min, Some(max)),
        None => (body.as_str(), None),
    };
    let Some(min) = number(min) else {
        return Ok(None);
    };
    let max = match max {
        Some("") => None,
        Some(m) => match number(m) {
            Some(m) => Some(m),
            None => return Ok(None),
        },
        None => None,
    };
    for n in std::iter::once(min).chain(max) {
        if n.parse::<u32>().map_or(true, |n| n > MAX_REPEAT) {
            return Err(format!(
                "bad repetition operator: {{{body}}} (RE2 counts up to {MAX_REPEAT})"
            ));
        }
    }
    Ok(Some(end + 1))
}

/// Checks the `(?...` of a group (after its `(`) and copies it: a name (`?P<name>`, `?<name>`),
/// a non-capturing group, or RE2's flags `i`, `m`, `s` and `U`. Returns the characters used.
fn group_flags(rest: &[char], out: &mut String) -> Result<usize, String> {
    out.push('?');
    match rest.get(1) {
        Some('P') | Some('<') | Some(':') => return Ok(1),
        _ => {}
    }
    let mut used = 1;
    for &c in &rest[1..] {
        used += 1;
        out.push(c);
        match c {
            ')' | ':' => return Ok(used),
            'i' | 'm' | 's' | 'U' | '-' => {}
            other => return Err(format!("invalid or unsupported flag {other:?} in (?...)")),
        }
    }
    Err("missing closing ) of a group's flags".into())
}

/// A character class after its `[`, up to and with its `]`, written to `out`. Returns the
/// characters used.
fn class(rest: &[char], out: &mut String) -> Result<usize, String> {
    out.push('[');
    let mut i = 0;
    if rest.first() == Some(&'^') {
        out.push('^');
        i += 1;
    }
    // A `]` first is a literal one.
    if rest.get(i) == Some(&']') {
        out.push_str("\\]");
        i += 1;
    }
    while let Some(&c) = rest.get(i) {
        i += 1;
        match c {
            ']' => {
                out.push(']');
                return Ok(i);
            }
            '\\' => {
                let (text, used) = escape(&rest[i..], true)?;
                out.push_str(&text);
                i += used;
            }
            '[' => match posix_class(&rest[i..]) {
                Some(used) => {
                    out.push('[');
                    out.extend(&rest[i..i + used]);
                    i += used;
                }
                // RE2 has no nested classes: `[` is itself.
                None => out.push_str("\\["),
            },
            // RE2 has no class set operations (`&&`, `--`, `~~`): each is a literal character
            // (a `-` right after another ends the range it opens).
            '&' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '-' if out.ends_with('-') && !out.ends_with("\\-") => out.push_str("\\-"),
            c => out.push(c),
        }
    }
    Err("missing closing ] of a character class".into())
}

/// The length of `:name:]` (or `:^name:]`) after a `[` inside a class, when it is one.
fn posix_class(rest: &[char]) -> Option<usize> {
    if rest.first() != Some(&':') {
        return None;
    }
    let end = (1..rest.len()).find(|&j| rest[j] == ':' && rest.get(j + 1) == Some(&']'))?;
    let name = &rest[1..end];
    (name.iter().all(|c| c.is_ascii_alphabetic() || *c == '^')).then_some(end + 2)
}

/// An escape after its `\`, as the `regex` crate must read it for RE2's meaning, inside a class
/// or not. Returns the text and the characters used.
fn escape(rest: &[char], in_class: bool) -> Result<(String, usize), String> {
    let Some(&c) = rest.first() else {
        return Err("trailing backslash at end of expression".into());
    };
    // RE2's Perl classes are ASCII; the regex crate's are Unicode.
    let perl = |set: &str, negated: bool| match (in_class, negated) {
        (true, false) => set.to_string(),
        (true, true) | (false, true) => format!("[^{set}]"),
        (false, false) => format!("[{set}]"),
    };
    let text = match c {
        'd' => perl("0-9", false),
        'D' => perl("0-9", true),
        'w' => perl("0-9A-Za-z_", false),
        'W' => perl("0-9A-Za-z_", true),
        's' => perl("\\t\\n\\x0C\\r ", false),
        'S' => perl("\\t\\n\\x0C\\r ", true),
        'b' | 'B' if !in_class => format!("(?-u:\\{c})"),
        'A' | 'z' if !in_class => format!("\\{c}"),
        'a' | 'f' | 't' | 'n' | 'r' | 'v' => format!("\\{c}"),
        'Q' if !in_class => {
            let text: String = rest[1..].iter().collect();
            let (literal, used) = match text.find("\\E") {
                Some(end) => (&text[..end], 1 + text[..end].chars().count() + 2),
                None => (text.as_str(), rest.len()),
            };
            return Ok((regex::escape(literal), used));
        }
        'x' | 'p' | 'P' => {
            // `\x41`, `\x{263a}`, `\pL`, `\p{Greek}`: copied whole, braces and all.
            let len = match rest.get(1) {
                Some('{') => match rest.iter().position(|&c| c == '}') {
                    Some(end) => end + 1,
                    None => return Err(format!("missing closing }} of \\{c}{{")),
                },
                Some(_) if c == 'x' => 3.min(rest.len()),
                Some(_) => 2,
                None => return Err(format!("incomplete escape \\{c}")),
            };
            return Ok((format!("\\{}", rest[..len].iter().collect::<String>()), len));
        }
        '0'..='7' => {
            // Octal: `\0` with up to two more digits, or `\1`-`\7` with one or two more (a
            // single digit would be a back reference, which RE2 does not have).
            let len = 1 + rest[1..]
                .iter()
                .take(2)
                .take_while(|c| ('0'..='7').contains(*c))
                .count();
            if c != '0' && len == 1 {
                return Err(format!("invalid escape \\{c}: RE2 has no back references"));
            }
            let digits: String = rest[..len].iter().collect();
            let code = u32::from_str_radix(&digits, 8).unwrap_or(0);
            return Ok((format!("\\x{{{code:X}}}"), len));
        }
        // Any punctuation may be escaped, and means itself (the regex crate reads `\<` and
        // `\>` as word boundaries, so those two are written bare).
        '<' | '>' => c.to_string(),
        c if c.is_ascii_punctuation() => format!("\\{c}"),
        c => return Err(format!("invalid escape sequence \\{c}")),
    };
    Ok((text, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(pattern: &str, value: &str) -> bool {
        compile(pattern, true)
            .unwrap_or_else(|e| panic!("{pattern}: {e}"))
            .is_match(value)
    }

    #[test]
    fn perl_classes_and_word_boundaries_are_ascii_as_in_re2() {
        assert!(full(r"\d+", "123"));
        assert!(!full(r"\d+", "١٢٣"), "Arabic-Indic digits");
        assert!(!full(r"\d+", "１２３"), "fullwidth digits");
        assert!(!full(r"\w+", "é"));
        assert!(full(r"\w+", "a_Z9"));
        assert!(!full(r"a\sb", "a\u{a0}b"));
        assert!(full(r"a\sb", "a\tb"));
        assert!(full(r"\D", "é"));
        assert!(full(r"[\d.]+", "1.2"));
        assert!(!full(r"[\d.]+", "１"));
        assert!(full(r"[^\W]+", "abc"));
        assert!(!full(r"[\S]", " "));
        assert!(
            full(r".*\bé", "aé"),
            "é is no word character: a boundary before it"
        );
        assert!(full(r"[\w.-]+", "api.v1-x"));
    }

    #[test]
    fn re2_syntax_the_regex_crate_lacks_or_reads_otherwise() {
        assert!(full(r"\Q1.2\E", "1.2"));
        assert!(!full(r"\Q1.2\E", "102"));
        assert!(full(r"v\Q1.*", "v1.*"), "\\Q to the end");
        // No class intersection or nesting in RE2: a class of `a-z&[^b`, then `]+`.
        assert!(full(r"[a-z&&[^b]]+", "^]]"));
        assert!(!full(r"[a-z&&[^b]]+", "a"));
        assert!(full(r"[a~~b]+", "a~b"));
        assert!(full(r"[[]", "["));
        assert!(full(r"[]a]+", "]a"));
        assert!(full(r"[[:alpha:]]+", "abc"));
        assert!(full(r"[[:^digit:]]", "x"));
        assert!(full(r"\101\0", "A\0"));
        assert!(full(r"\<a\>", "<a>"));
        assert!(full(r"a{,2}", "a{,2}"), "not a repetition: literal braces");
        assert!(full(r"a{2}", "aa"));
        assert!(full(r"a*?b+?c??", "bc"));
        assert!(full(r"\x41\x{263a}\pL\p{Greek}", "A☺xα"));
        assert!(full(r"(?i)ABC", "abc"));
        assert!(full(r"(?P<v>\d)(?:x)", "1x"));
    }

    #[test]
    fn what_re2_refuses_is_refused() {
        for bad in [
            "a{1001}",
            "a{2,1001}",
            "a**",
            "a++",
            "a*+",
            "a??+",
            r"\1",
            r"\8",
            r"\y",
            r"\C",
            "(?x)a",
            "[a",
            r"\",
            "(?=x)",
        ] {
            assert!(compile(bad, true).is_err(), "{bad}");
        }
        assert!(compile("a{1000}", true).is_ok());
    }

    #[test]
    fn a_search_is_not_anchored() {
        let re = compile(r"/v\d/", false).unwrap();
        assert_eq!(re.replace_all("/api/v1/x", "/"), "/api/x");
    }
}
