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

/// The pattern in the `regex` crate's syntax, with the meaning RE2 gives it. Linear in the
/// pattern's length: every character is looked at a bounded number of times.
fn translate(pattern: &str) -> Result<String, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut i = 0;
    let mut last = Last::Atom;
    // Per open group, the largest product of repetition counts inside it; and the product the
    // last atom carries (a group's, once closed), which a count after it multiplies.
    let mut groups: Vec<u32> = vec![1];
    let mut atom_count = 1u32;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '\\' => {
                let (item, used) = escape(&chars[i..], false)?;
                out.push_str(item.text());
                i += used;
                (last, atom_count) = (Last::Atom, 1);
            }
            '[' => {
                i += class(&chars[i..], &mut out)?;
                (last, atom_count) = (Last::Atom, 1);
            }
            '(' => {
                out.push('(');
                if chars.get(i) == Some(&'?') {
                    i += group_flags(&chars[i..], &mut out)?;
                }
                // `(?i)` sets flags and opens no group.
                if !out.ends_with(')') {
                    groups.push(1);
                }
                (last, atom_count) = (Last::Atom, 1);
            }
            ')' => {
                if groups.len() < 2 {
                    return Err("unexpected ): no group is open".into());
                }
                let inner = groups.pop().unwrap_or(1);
                if let Some(outer) = groups.last_mut() {
                    *outer = (*outer).max(inner);
                }
                out.push(')');
                (last, atom_count) = (Last::Atom, inner);
            }
            '*' | '+' | '?' => {
                last = repeat(last, c == '?')?;
                out.push(c);
            }
            '{' => match counted(&chars[i..]) {
                Some((used, count)) => {
                    last = repeat(last, false)?;
                    // RE2 refuses counts whose product, nested, is above 1000: `(a{10}){101}`.
                    if count > 0 {
                        let total = atom_count.saturating_mul(count);
                        if total > MAX_REPEAT {
                            return Err(format!(
                                "bad repetition operator: {{{}}} (RE2 counts up to {MAX_REPEAT}, nested counts multiplied)",
                                chars[i..i + used - 1].iter().collect::<String>()
                            ));
                        }
                        atom_count = total;
                        if let Some(g) = groups.last_mut() {
                            *g = (*g).max(total);
                        }
                    }
                    out.push('{');
                    out.extend(&chars[i..i + used]);
                    i += used;
                }
                // Not a repetition: RE2 reads a literal brace.
                None => {
                    out.push_str("\\{");
                    (last, atom_count) = (Last::Atom, 1);
                }
            },
            '}' => {
                out.push_str("\\}");
                (last, atom_count) = (Last::Atom, 1);
            }
            c => {
                out.push(c);
                (last, atom_count) = (Last::Atom, 1);
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

/// The digits of a count at the start of `rest`, none with a leading zero (RE2 reads `{01}`
/// as text); a huge count saturates.
fn count_digits(rest: &[char]) -> Option<(usize, u32)> {
    let len = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if len == 0 || (len > 1 && rest[0] == '0') {
        return None;
    }
    let n = (rest[..len].iter()).fold(0u32, |n, c| {
        n.saturating_mul(10).saturating_add(*c as u32 - '0' as u32)
    });
    Some((len, n))
}

/// `{n}`, `{n,}` or `{n,m}` after its `{`: the characters it takes, with its closing brace,
/// and the count RE2 checks (`m`, else `n`); `None` when the brace does not open one.
fn counted(rest: &[char]) -> Option<(usize, u32)> {
    let (mut used, min) = count_digits(rest)?;
    let mut count = min;
    if rest.get(used) == Some(&',') {
        used += 1;
        if let Some((len, max)) = count_digits(&rest[used..]) {
            used += len;
            count = max;
        } else if rest.get(used).is_some_and(char::is_ascii_digit) {
            return None;
        }
    }
    (rest.get(used) == Some(&'}')).then_some((used + 1, count))
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

/// One thing a class holds, in the `regex` crate's syntax: a set of characters (`\d`, `\pL`,
/// `[:alpha:]`) or a single character, which alone may bound a range.
enum Item {
    Set(String),
    Char(String),
}

impl Item {
    fn text(&self) -> &str {
        match self {
            Item::Set(t) | Item::Char(t) => t,
        }
    }
}

/// A character class after its `[`, up to and with its `]`, written to `out` item by item, as
/// RE2 reads it: a `-` is a range only between two characters (else itself), and `[`, `&&`,
/// `~~` and `--` are no operators. Every literal the `regex` crate could read otherwise is
/// escaped. Returns the characters used.
fn class(rest: &[char], out: &mut String) -> Result<usize, String> {
    out.push('[');
    let mut i = 0;
    if rest.first() == Some(&'^') {
        out.push('^');
        i += 1;
    }
    // A `]` first is a literal one.
    let mut first = true;
    loop {
        let Some(&c) = rest.get(i) else {
            return Err("missing closing ] of a character class".into());
        };
        if c == ']' && !first {
            out.push(']');
            return Ok(i + 1);
        }
        first = false;
        let (lo, used) = class_item(&rest[i..])?;
        i += used;
        let ranged = rest.get(i) == Some(&'-') && rest.get(i + 1).is_some_and(|&c| c != ']');
        match lo {
            Item::Char(lo) if ranged => {
                let (hi, used) = class_item(&rest[i + 1..])?;
                let Item::Char(hi) = hi else {
                    return Err("invalid character class range: it ends at a set".into());
                };
                i += 1 + used;
                out.push_str(&lo);
                out.push('-');
                out.push_str(&hi);
            }
            item => out.push_str(item.text()),
        }
    }
}

/// The item at the start of a class's `rest`, and the characters it takes.
fn class_item(rest: &[char]) -> Result<(Item, usize), String> {
    match rest[0] {
        '\\' => escape(&rest[1..], true).map(|(item, used)| (item, used + 1)),
        '[' => Ok(match posix_class(&rest[1..]) {
            Some(used) => (
                Item::Set(
                    std::iter::once('[')
                        .chain(rest[1..1 + used].iter().copied())
                        .collect(),
                ),
                1 + used,
            ),
            // RE2 has no nested classes: `[` is itself.
            None => (Item::Char("\\[".into()), 1),
        }),
        c => Ok((Item::Char(class_char(c)), 1)),
    }
}

/// A literal character inside a class: escaped where the `regex` crate reads it as syntax.
fn class_char(c: char) -> String {
    match c {
        '[' | ']' | '\\' | '-' | '^' | '&' | '~' => format!("\\{c}"),
        c => c.to_string(),
    }
}

/// The length of `:name:]` (or `:^name:]`) after a `[` inside a class, when it is one.
fn posix_class(rest: &[char]) -> Option<usize> {
    if rest.first() != Some(&':') {
        return None;
    }
    let mut j = 1;
    if rest.get(j) == Some(&'^') {
        j += 1;
    }
    let letters = rest[j..]
        .iter()
        .take_while(|c| c.is_ascii_alphabetic())
        .count();
    j += letters;
    (letters > 0 && rest.get(j) == Some(&':') && rest.get(j + 1) == Some(&']')).then_some(j + 2)
}

/// An escape after its `\`, as the `regex` crate must read it for RE2's meaning, inside a class
/// or not. Returns the item and the characters used.
fn escape(rest: &[char], in_class: bool) -> Result<(Item, usize), String> {
    let Some(&c) = rest.first() else {
        return Err("trailing backslash at end of expression".into());
    };
    // RE2's Perl classes are ASCII; the regex crate's are Unicode. Written as a nested class,
    // which means the same inside a class and out.
    let perl = |set: &str, negated: bool| {
        let caret = if negated { "^" } else { "" };
        Item::Set(format!("[{caret}{set}]"))
    };
    let item = match c {
        'd' => perl("0-9", false),
        'D' => perl("0-9", true),
        'w' => perl("0-9A-Za-z_", false),
        'W' => perl("0-9A-Za-z_", true),
        's' => perl("\\t\\n\\x0C\\r ", false),
        'S' => perl("\\t\\n\\x0C\\r ", true),
        'b' | 'B' if !in_class => Item::Set(format!("(?-u:\\{c})")),
        'A' | 'z' if !in_class => Item::Set(format!("\\{c}")),
        'a' | 'f' | 't' | 'n' | 'r' | 'v' => Item::Char(format!("\\{c}")),
        'Q' if !in_class => {
            // Everything up to `\E` (or the end) is literal text.
            let end = (1..rest.len())
                .find(|&j| rest[j] == '\\' && rest.get(j + 1) == Some(&'E'))
                .unwrap_or(rest.len());
            let literal: String = rest[1..end].iter().collect();
            let used = if end < rest.len() { end + 2 } else { end };
            return Ok((Item::Set(regex::escape(&literal)), used));
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
            let text = format!("\\{}", rest[..len].iter().collect::<String>());
            return Ok((
                if c == 'x' {
                    Item::Char(text)
                } else {
                    Item::Set(text)
                },
                len,
            ));
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
            let code = rest[..len]
                .iter()
                .fold(0u32, |n, c| n * 8 + (*c as u32 - '0' as u32));
            return Ok((Item::Char(format!("\\x{{{code:X}}}")), len));
        }
        // Any other ASCII character but a letter or digit may be escaped, and means itself
        // (written so the regex crate reads it as itself: it reads `\<` and `\>` as word
        // boundaries).
        c if c.is_ascii() && !c.is_ascii_alphanumeric() => Item::Char(match in_class {
            true => class_char(c),
            false => regex::escape(&c.to_string()),
        }),
        c => return Err(format!("invalid escape sequence \\{c}")),
    };
    Ok((item, 1))
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
    fn classes_read_as_re2_reads_them() {
        // A `-` after a set is itself, not a range.
        assert!(full(r"[\s-x]", "-") && full(r"[\s-x]", "x") && !full(r"[\s-x]", "5"));
        assert!(full(r"[\w-.]+", "a-b.c") && !full(r"[\w-.]", "/"));
        assert!(full(r"[\pL-z]", "-"));
        // A range may start at a literal `-`: `[--/]` is `-` to `/`.
        assert!(full(r"[--/]", ".") && !full(r"[^--/]", "."));
        assert!(full(r"[a-c--/]", ".") && full(r"[a-c-e]", "-"));
        assert!(full(r"[a-]", "-") && full(r"[-a]", "-"));
        assert!(compile(r"[!-\d]", true).is_err(), "a range ending at a set");
    }

    #[test]
    fn counts_and_escapes_as_re2_reads_them() {
        // A count with a leading zero is text.
        assert!(full("a{01}", "a{01}") && !full("a{01}", "a"));
        assert!(full("x{0}y", "y"));
        // Nested counts multiply, up to 1000.
        assert!(compile("(a{10}){101}", true).is_err());
        assert!(compile("((a{2}){2}){251}", true).is_err());
        assert!(compile("(a{10}){100}", true).is_ok());
        assert!(compile("(?:a{10})*b{1000}", true).is_ok());
        assert!(compile("a{100000}", true).is_err());
        // Any ASCII character but a letter or digit may be escaped.
        assert!(full(r"foo\ bar", "foo bar"));
        assert!(full("a\\\tb", "a\tb"));
        assert!(compile("a)|(b", true).is_err(), "an unbalanced )");
        assert!(full("(?i)(a)B", "Ab") && compile("(?i)a)", true).is_err());
    }

    #[test]
    fn long_patterns_translate_in_linear_time() {
        // Braces, quotes and classes that never close: each character is looked at a bounded
        // number of times (this took seconds when each `{` scanned to the end).
        for unit in ["{", "\\Q", "[[:"] {
            let pattern = unit.repeat(200_000);
            let _ = translate(&pattern);
        }
    }

    #[test]
    fn a_search_is_not_anchored() {
        let re = compile(r"/v\d/", false).unwrap();
        assert_eq!(re.replace_all("/api/v1/x", "/"), "/api/x");
    }
}
