//! Differential property test: what `FCALL herald_publish` (library.lua)
//! accepts, the worker (`Event::from_fields`, serde_json, `check_url`) must
//! read, with herald's payload at most `MAX_PAYLOAD_BYTES`. One TestApp (one
//! redis-server with herald's function loaded); thousands of adversarial
//! texts for `data`, `actions`, `vibrate` and the URL fields (mutations of
//! valid JSON and URLs), and a payload-size property at the exact limit.
//!
//! Each case is sent with FCALL; when it is accepted, the entry is read back
//! with XRANGE as the worker reads it (non-UTF-8 marked, `complete_entry`)
//! and decoded. Mismatches are grouped by the worker's error; for each group
//! proptest shrinks one example. The reverse direction for URLs (check_url
//! refuses, FCALL takes it) is reported too. The test fails listing every
//! group found.
//!
//! Knobs: DIFF_CASES (default 2500) scales the number of cases.

mod helpers;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};

use helpers::*;
use herald::shared::event::{Event, EventDefaults, MAX_PAYLOAD_BYTES};
use herald::shared::notification::check_url;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

type Fields = Vec<(String, Vec<u8>)>;

/// Bytes as an escaped literal, runs of one byte shortened (`x<*3000>`).
fn show(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    let mut i = 0;
    while i < bytes.len() {
        let mut j = i;
        while j < bytes.len() && bytes[j] == bytes[i] {
            j += 1;
        }
        let one = bytes[i..i + 1].escape_ascii().to_string();
        if j - i >= 12 {
            out.push_str(&format!("{one}<*{}>", j - i));
        } else {
            for _ in i..j {
                out.push_str(&one);
            }
        }
        i = j;
    }
    out.push('"');
    out
}

fn show_fields(fields: &Fields) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", show(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The worker's error, with numbers and quoted parts blurred, as a group name.
fn blur(text: &str) -> String {
    let text = text.split(" at line").next().unwrap_or(text);
    let mut out = String::new();
    let mut last_digit = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('N');
            }
            last_digit = true;
        } else {
            last_digit = false;
            out.push(c);
        }
    }
    out.chars().take(110).collect()
}

struct Probe {
    client: redis::Client,
    /// Error replies redis-rs could not parse (not UTF-8): the connection is renewed.
    unparseable: RefCell<Vec<String>>,
    conn: RefCell<redis::Connection>,
    stream: String,
    defaults: EventDefaults,
    serial: Cell<u64>,
}

/// What each side said about one set of fields.
struct Verdict {
    /// FCALL: Ok(stream id) or the refusal.
    lua: Result<String, String>,
    /// The worker's reading of the entry FCALL wrote: Ok(payload length) or its error.
    rust: Option<Result<usize, String>>,
}

impl Probe {
    fn fcall(&self, fields: &Fields) -> Result<String, String> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("herald_publish").arg(1).arg(&self.stream);
        for (k, v) in fields {
            cmd.arg(k.as_bytes()).arg(v.as_slice());
        }
        let answer = cmd.query::<(String, String)>(&mut *self.conn.borrow_mut());
        match answer {
            Ok((id, outcome)) if outcome == "added" => Ok(id),
            Ok((id, outcome)) => Err(format!("OUTCOME {outcome} {id}")),
            Err(e) if e.code().is_none() => {
                // Not a server error: redis-rs could not parse the reply (an
                // error reply quoting non-UTF-8 bytes). A refusal; the
                // connection is renewed, since its buffer is left mid-reply.
                *self.conn.borrow_mut() = self.client.get_connection().expect("reconnect");
                let mut unparseable = self.unparseable.borrow_mut();
                if unparseable.len() < 5 {
                    unparseable.push(format!("{}: {e}", show_fields(fields)));
                }
                Err(format!("UNPARSEABLE {e}"))
            }
            Err(e) => Err(format!(
                "{} {}",
                e.code().unwrap_or("?"),
                e.detail().unwrap_or(&e.to_string())
            )),
        }
    }

    /// The entry as the worker reads it (src/shared/stream.rs), then deleted.
    fn read(&self, id: &str) -> HashMap<String, String> {
        let mut conn = self.conn.borrow_mut();
        let value: redis::Value = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg(id)
            .arg(id)
            .query(&mut *conn)
            .expect("XRANGE");
        let _: i64 = redis::cmd("XDEL")
            .arg(&self.stream)
            .arg(id)
            .query(&mut *conn)
            .expect("XDEL");
        // The worker's own parser: non-UTF-8 fields marked, then completed.
        let entry = herald::shared::stream::parse_entry_list(&self.stream, value, 1)
            .expect("an XRANGE answer")
            .pop()
            .expect("the entry");
        entry.fields.expect("its fields")
    }

    fn judge(&self, fields: &Fields) -> Verdict {
        let lua = self.fcall(fields);
        let rust = lua.as_ref().ok().map(|id| {
            let entry = self.read(id);
            Event::from_fields(&entry, &self.defaults)
                .map(|event| event.payload().len())
                .map_err(|e| format!("{}: {}", e.field, e.message))
        });
        Verdict { lua, rust }
    }

    fn next_id(&self) -> String {
        self.serial.set(self.serial.get() + 1);
        format!("d-{}", self.serial.get())
    }
}

/// Mismatches of one case: (group, what happened).
type Mismatches = Vec<(String, String)>;

/// The forward direction: FCALL took it, so the worker must read it with a payload that fits.
fn forward(verdict: &Verdict, fields: &Fields, group: &str) -> Mismatches {
    let mut out = Vec::new();
    match &verdict.rust {
        Some(Err(e)) => out.push((
            format!("F {group}: worker: {}", blur(e)),
            format!(
                "FCALL took {}; Event::from_fields: {e}",
                show_fields(fields)
            ),
        )),
        Some(Ok(len)) if *len > MAX_PAYLOAD_BYTES => out.push((
            format!("F {group}: payload over the limit"),
            format!("FCALL took {}; payload {len} bytes", show_fields(fields)),
        )),
        _ => {}
    }
    if let Err(e) = &verdict.lua {
        if !(e.starts_with("INVALID ")
            || e.starts_with("CONFLICT ")
            || e.starts_with("UNPARSEABLE "))
        {
            out.push((
                format!("L {group}: FCALL failed without a refusal: {}", blur(e)),
                format!("FCALL {}: {e}", show_fields(fields)),
            ));
        }
    }
    out
}

fn base(title: bool) -> Fields {
    let mut f: Fields = vec![
        ("topic".into(), b"a.b".to_vec()),
        ("user".into(), b"u-1".to_vec()),
    ];
    if title {
        f.push(("title".into(), b"t".to_vec()));
    }
    f
}

/// `f` with a `body` of `prefix` then 'x's making herald's payload exactly
/// MAX_PAYLOAD_BYTES by FCALL's own count (learnt from its refusal of one
/// too big); None when FCALL refuses `f` for something else.
fn at_limit(probe: &Probe, f: &Fields, prefix: &[u8]) -> Option<Fields> {
    let mut over = f.clone();
    let mut padded = prefix.to_vec();
    padded.extend(std::iter::repeat_n(b'x', 4000));
    over.push(("body".into(), padded));
    let refusal = probe.fcall(&over).err()?;
    let size: usize = refusal
        .split("the push payload would be ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    let excess = size.checked_sub(MAX_PAYLOAD_BYTES)?;
    if excess > 4000 {
        return None;
    }
    let mut exact = f.clone();
    let mut body = prefix.to_vec();
    body.extend(std::iter::repeat_n(b'x', 4000 - excess));
    exact.push(("body".into(), body));
    Some(exact)
}

// ---------------------------------------------------------------- generators

#[derive(Clone, Debug)]
enum Op {
    Insert(&'static [u8]),
    Byte(u8),
    Delete(u8),
    Dup(u8),
}

fn apply(mut s: Vec<u8>, ops: Vec<(Index, Op)>) -> Vec<u8> {
    for (at, op) in ops {
        let i = at.index(s.len() + 1);
        match op {
            Op::Insert(snippet) => {
                s.splice(i..i, snippet.iter().copied());
            }
            Op::Byte(b) => s.insert(i, b),
            Op::Delete(n) => {
                let end = (i + n as usize).min(s.len());
                s.drain(i..end);
            }
            Op::Dup(n) => {
                let end = (i + n as usize).min(s.len());
                let part = s[i..end].to_vec();
                s.splice(i..i, part);
            }
        }
    }
    s
}

fn mutated(
    seed: BoxedStrategy<Vec<u8>>,
    snippets: &'static [&'static [u8]],
) -> BoxedStrategy<Vec<u8>> {
    let op = prop_oneof![
        5 => prop::sample::select(snippets).prop_map(Op::Insert),
        2 => any::<u8>().prop_map(Op::Byte),
        1 => (1u8..8).prop_map(Op::Delete),
        1 => (1u8..16).prop_map(Op::Dup),
    ];
    (
        seed,
        prop_oneof![
            2 => Just(Vec::new()),
            3 => prop::collection::vec((any::<Index>(), op), 1..4),
        ],
    )
        .prop_map(|(s, ops)| apply(s, ops))
        .boxed()
}

const JSON_SNIPPETS: &[&[u8]] = &[
    b"\\u0061",
    b"\\u0041",
    b"\\ud800",
    b"\\udc00",
    b"\\ud83d\\ude00",
    b"\\uD800\\u0041",
    b"\\uDBFF\\uDFFF",
    b"\\uD800\\uD800",
    b"\\u0000",
    b"\\u00a0",
    b"\\u2028",
    b"\\/",
    b"\\x",
    b"\\U0061",
    b"\\",
    b"\"",
    b" ",
    b"\t",
    b"\n",
    b"\r",
    b"\x0b",
    b"\x0c",
    b"\xc2\xa0",
    b"\xe2\x80\xa8",
    b"\xe3\x80\x80",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\x7f",
    b"\x00",
    b"\x1f",
    b"1e309",
    b"-0",
    b"1E+2",
    b"0.5e-3",
    b"1.7976931348623157e308",
    b"1.7976931348623158e308",
    b"1.7976931348623159e308",
    b"17976931348623157e292",
    b"4.9e-324",
    b"1e-400",
    b"00",
    b"0x1",
    b"+1",
    b"1.",
    b".5",
    b"1e",
    b"1e+",
    b"NaN",
    b"Infinity",
    b"-",
    b",",
    b":",
    b"[",
    b"]",
    b"{",
    b"}",
    b"null",
    b"true",
    b"\"a\":1,",
    b"\"\\u0061\":1,",
    b"\"action\":\"x\",",
    b"\"\\u0061ction\":\"x\",",
    b"\"title\":\"x\",",
    b"\"ti\\u0074le\":\"x\",",
    b"\"url\":\"/x\",",
    b"\"icon\":\"https://a.example/i\",",
];

/// Decimal digits of f64::MAX, and of the halfway point to the next power (the
/// boundary where a correctly rounded parse overflows).
const DBL_MAX: &str = "179769313486231570814527423731704356798070567525844996598917476803157260780028538760589558632766878171540458953514382464234321326889464182768467546703537516986049910576551282076245490090389328944075868508455133942304583236903222948165808559332123348274797826204144723168738177180919299881250404026184124858368";
const DBL_HALF: &str = "179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792";

/// Numbers: any shape, and many next to the largest double.
fn number() -> BoxedStrategy<String> {
    let near_max = (
        prop::sample::select(vec![DBL_MAX, DBL_HALF]),
        1usize..40,
        prop::option::of(0u8..10),
        0u8..4,
        any::<bool>(),
    )
        .prop_map(|(digits, k, last, form, negative)| {
            let mut d: String = digits[..k].to_string();
            if let Some(last) = last {
                d.pop();
                d.push((b'0' + last) as char);
            }
            let exp = 309 - k as i32; // value = d * 10^exp
            let body = match form {
                0 => format!("{}.{}e308", &d[..1], if k > 1 { &d[1..] } else { "0" }),
                1 => format!("{d}e{exp}"),
                2 => format!("{d}{}", "0".repeat(exp as usize)),
                _ => format!("0.{d}E+309"),
            };
            if negative {
                format!("-{body}")
            } else {
                body
            }
        });
    prop_oneof![
        3 => "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,25})?([eE][+-]?[0-9]{1,4})?",
        3 => near_max,
        1 => prop::sample::select(vec![
            "-0", "1E+2", "0.5e-3", "1e309", "1e308", "-1e309", "0e99999", "1e-99999",
            "18446744073709551616", "-9223372036854775809", "4.9e-324", "2.4703282292062327e-324",
        ])
        .prop_map(String::from),
    ]
    .boxed()
}

/// Valid JSON of many shapes (before mutation).
fn json_seed() -> BoxedStrategy<Vec<u8>> {
    let fixed = prop::sample::select(vec![
        r#"{"visit":981,"fee":{"amount":3.5,"currency":"EUR"},"tags":["a",null,true]}"#,
        r#"{"a":1}"#,
        r#"[1,2.5,-0,1E+2,0.5e-3]"#,
        r#""x""#,
        r#"0"#,
        r#"true"#,
        r#"[]"#,
        r#"{}"#,
        r#"{"k":{"n":[true,false,null]}}"#,
        r#""\ud83d\ude00 \u00e9 \/ \b\f\n\r\t \"""#,
        " \t\n\r{\"a\" : [ 1 , 2 ] }\r\n ",
        r#"{"a":1,"\u0061":2}"#,
        r#"{"a":1,"b":{"a":2}}"#,
        r#"{"\u0061":1,"\u0041":2}"#,
        r#"{"a\/b":1,"a/b":2}"#,
        "\"\u{a0}\u{2028}\u{fffd}é\"",
        r#"{"":1,"\u0000":2}"#,
    ])
    .prop_map(|s| s.as_bytes().to_vec());
    let deep = (
        90usize..135,
        prop::sample::select(vec![("[", "]"), ("{\"a\":", "}"), ("[{\"k\":", "}]")]),
        prop::sample::select(vec!["1", "[]", "{}", "\"x\"", "null"]),
    )
        .prop_map(|(n, (open, close), leaf)| {
            format!("{}{leaf}{}", open.repeat(n), close.repeat(n)).into_bytes()
        });
    let numbers = (number(), any::<bool>()).prop_map(|(n, wrap)| {
        if wrap {
            format!("{{\"n\":[{n}]}}").into_bytes()
        } else {
            n.into_bytes()
        }
    });
    prop_oneof![3 => fixed, 1 => deep, 3 => numbers].boxed()
}

fn data_text() -> BoxedStrategy<Vec<u8>> {
    mutated(json_seed(), JSON_SNIPPETS)
}

/// A JSON string literal of raw bytes (escaping only what JSON requires).
fn json_string(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
    out
}

fn member_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec![
            r#""pay""#, r#""Pay now""#, r#""p\u0061y""#, r#""\u00a0""#, r#"" ""#, r#""\u3000""#,
            r#""\u0000""#, r#""""#, r#""\ud83d\ude00""#, "\"\u{2028}\"", r#""/pay/981""#,
            r#""https://a.example/i.png""#, r#""https://A.EXAMPLE:443/x""#, "null", "1", "[]",
            r#""\u200b""#, r#""\ufeff""#, r#""\u180e""#, r#""\u0085""#,
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => (1usize..140, prop::sample::select(vec!["x", "é", "\\u00e9", "\\n", "\u{1f600}", "\\ud83d\\ude00"]))
            .prop_map(|(n, unit)| format!("\"{}\"", unit.repeat(n)).into_bytes()),
        2 => url_text().prop_map(|u| json_string(&u)),
    ]
    .boxed()
}

fn action_object() -> BoxedStrategy<Vec<u8>> {
    let key = prop::sample::select(vec![
        r#""action""#,
        r#""title""#,
        r#""icon""#,
        r#""url""#,
        r#""\u0061ction""#,
        r#""ti\u0074le""#,
        r#""\u0069con""#,
        r#""ur\u006c""#,
        r#""\u0061\u0063tion""#,
        r#""Action""#,
        r#""act\/ion""#,
        r#""extra""#,
    ]);
    (
        member_value(),
        member_value(),
        prop::collection::vec((key, member_value()), 0..3),
        any::<Index>(),
        prop::sample::select(vec![("", ""), (" ", ""), ("\n  ", "\n"), ("\t", " ")]),
    )
        .prop_map(|(id, title, extra, at, (pad, pad2))| {
            let mut members = vec![
                [b"\"action\"".to_vec(), b":".to_vec(), id].concat(),
                [b"\"title\"".to_vec(), b":".to_vec(), title].concat(),
            ];
            for (k, v) in extra {
                let m = [k.as_bytes().to_vec(), b":".to_vec(), v].concat();
                let i = at.index(members.len() + 1);
                members.insert(i, m);
            }
            let mut out = b"{".to_vec();
            out.extend_from_slice(pad.as_bytes());
            out.extend(members.join(&b","[..]));
            out.extend_from_slice(pad2.as_bytes());
            out.push(b'}');
            out
        })
        .boxed()
}

fn actions_text() -> BoxedStrategy<Vec<u8>> {
    let seed = (prop::collection::vec(action_object(), 0..6), any::<bool>())
        .prop_map(|(objects, spaced)| {
            let sep: &[u8] = if spaced { b", " } else { b"," };
            let mut out = b"[".to_vec();
            out.extend(objects.join(sep));
            out.push(b']');
            out
        })
        .boxed();
    mutated(seed, JSON_SNIPPETS)
}

fn vibrate_text() -> BoxedStrategy<Vec<u8>> {
    let token = prop_oneof![
        6 => (0u32..=10_000).prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec![
            "0", "10000", "10001", "00", "01", "1e3", "1E3", "1.0", "-0", "-1", "4294967295",
            "4294967296", "99999999999999999999", "9007199254740993", " 1", "1 ", "\t7\n", "\x0b1",
            "\u{a0}1", "null", "\"1\"", "[1]",
        ])
        .prop_map(String::from),
    ];
    let seed = (
        prop::collection::vec(token, 0..36),
        prop::sample::select(vec![",", ", ", " ,", ",\n"]),
        prop::sample::select(vec![
            ("", ""),
            (" ", " "),
            ("\n", "\r\n"),
            ("\x0c", ""),
            ("\u{a0}", ""),
        ]),
    )
        .prop_map(|(tokens, sep, (lead, trail))| {
            format!("{lead}[{}]{trail}", tokens.join(sep)).into_bytes()
        })
        .boxed();
    mutated(seed, JSON_SNIPPETS)
}

const URL_SNIPPETS: &[&[u8]] = &[
    b"%",
    b"%41",
    b"%2e",
    b"%zz",
    b"\\",
    b" ",
    b"\t",
    b"\xc2\xa0",
    b"\xe2\x80\xa8",
    b"\xe2\x80\x8b",
    b"\xc2\x85",
    b"\xc2\xad",
    b"\xef\xbb\xbf",
    b"\x7f",
    b"\x00",
    b"@",
    b":",
    b":443",
    b":0",
    b":65536",
    b"..",
    b".",
    b"-",
    b"_",
    b"[",
    b"]",
    b"\xc3\xbc",
    b"\xff",
    b"#",
    b"?",
    b"/",
    b"//",
    b"xn--",
    b"HTTPS://",
    b"A",
    b"1",
];

fn url_seed() -> BoxedStrategy<Vec<u8>> {
    let scheme = prop::sample::select(vec![
        "https://",
        "https://",
        "https://",
        "HTTPS://",
        "HtTpS://",
        "http://",
        "https:/",
        "https:",
        "https:\\\\",
        "//",
        "/",
        "",
        " https://",
        "https://\u{a0}",
    ]);
    let userinfo = prop::sample::select(vec!["", "", "", "", "user@", "u:p@", "@"]);
    let label = prop_oneof![
        6 => prop::sample::select(vec![
            "a", "example", "parking", "xn--bcher-kva", "XN--BCHER-KVA", "bücher", "ex_ample",
            "-a", "a-", "a--b", "1", "123", "0x1", "%41", "EXAMPLE", "[::1]", "127", "0", "com",
            "ﬁ", "ＡＢ", "a\u{200b}b",
        ])
        .prop_map(String::from),
        1 => (62usize..66).prop_map(|n| "a".repeat(n)),
    ];
    let host = prop_oneof![
        6 => prop::collection::vec(label, 1..5).prop_map(|l| l.join(".")),
        1 => (60usize..66, 3usize..5).prop_map(|(n, k)| vec!["b".repeat(n); k].join(".") + ".com"),
    ];
    let trailing = prop::sample::select(vec!["", "", "", ".", ".."]);
    let port = prop::sample::select(vec![
        "", "", "", "", ":", ":0", ":443", ":65535", ":65536", ":099999", ":00443", ":+1", ":1a",
        ": 1", ":8080:1", ":١٢",
    ]);
    let path = prop_oneof![
        4 => prop::sample::select(vec![
            "", "/", "/x", "/visits/981", "/a%20b", "/%zz", "?q=1", "#f", "/a?b#c", "/a\\b",
            "/a b", "/\u{a0}", "/\u{2028}", "/\u{85}", "/\u{3000}", "/é", "//x", "/..", "?", "#",
            "/@x", "/:x",
        ])
        .prop_map(String::from),
        1 => (990usize..1030).prop_map(|n| format!("/{}", "p".repeat(n))),
    ];
    (scheme, userinfo, host, trailing, port, path)
        .prop_map(|(s, u, h, t, p, path)| {
            let url = if s == "/" || s.is_empty() && path.starts_with('/') {
                // a relative URL: the path alone (with s "/", a doubled one).
                format!("{s}{path}")
            } else {
                format!("{s}{u}{h}{t}{p}{path}")
            };
            url.into_bytes()
        })
        .boxed()
}

fn url_text() -> BoxedStrategy<Vec<u8>> {
    mutated(url_seed(), URL_SNIPPETS)
}

fn publish_at() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        3 => Just(None),
        2 => "(0000|0001|1969|1970|2025)-(01|02|12)-(01|28|29|31)[Tt ](00|12|23):(00|59):(00|59|60)(\\.[0-9]{1,12})?(Z|z|[+-](00|01|23):(00|01|59))"
            .prop_map(Some),
    ]
    .boxed()
}

// ---------------------------------------------------------------- exploring

struct Finding {
    group: String,
    count: usize,
    minimal: String,
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 3000,
            max_global_rejects: 100_000,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[17; 32]),
    )
}

/// Runs `check` on `cases` inputs of `strategy`, groups the mismatches, then
/// shrinks one example of each group.
fn explore<S>(
    name: &str,
    strategy: S,
    cases: u32,
    check: impl Fn(&S::Value) -> Mismatches,
) -> Vec<Finding>
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let started = std::time::Instant::now();
    let groups: RefCell<BTreeMap<String, (usize, String)>> = RefCell::default();
    let _ = runner(cases).run(&strategy, |input| {
        for (group, detail) in check(&input) {
            let mut groups = groups.borrow_mut();
            let slot = groups.entry(group).or_insert((0, detail));
            slot.0 += 1;
        }
        Ok(())
    });
    let groups = groups.into_inner();
    println!(
        "{name}: {cases} cases, {} mismatch groups, {:.1?}",
        groups.len(),
        started.elapsed()
    );
    let mut findings = Vec::new();
    for (group, (count, first)) in groups {
        let result = runner(cases).run(&strategy, |input| {
            match check(&input).into_iter().find(|(g, _)| *g == group) {
                Some((_, detail)) => Err(TestCaseError::fail(detail)),
                None => Ok(()),
            }
        });
        let minimal = match result {
            Err(TestError::Fail(reason, _)) => reason.message().to_string(),
            _ => format!("(did not recur while shrinking) {first}"),
        };
        println!("  [{count}x] {group}\n      minimal: {minimal}");
        findings.push(Finding {
            group: format!("{name}: {group}"),
            count,
            minimal,
        });
    }
    findings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_fcall_accepts_the_worker_reads() {
    let app = TestApp::start().await;
    let scale: u32 = std::env::var("DIFF_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5000);
    let probe = Probe {
        client: redis::Client::open(app.redis.url()).expect("client"),
        unparseable: RefCell::default(),
        conn: RefCell::new(app.redis.conn()),
        stream: app.stream(),
        defaults: app.settings.events.defaults(),
        serial: Cell::new(0),
    };
    let mut findings = Vec::new();

    // data: in a notification, and as a data push (no title).
    findings.extend(explore(
        "data",
        (data_text(), any::<bool>()),
        scale,
        |(data, title)| {
            let mut f = base(*title);
            f.push(("data".into(), data.clone()));
            forward(
                &probe.judge(&f),
                &f,
                if *title { "data" } else { "data push" },
            )
        },
    ));

    findings.extend(explore("actions", actions_text(), scale, |actions| {
        let mut f = base(true);
        f.push(("actions".into(), actions.clone()));
        forward(&probe.judge(&f), &f, "actions")
    }));

    findings.extend(explore(
        "vibrate",
        vibrate_text(),
        scale * 3 / 5,
        |vibrate| {
            let mut f = base(true);
            f.push(("vibrate".into(), vibrate.clone()));
            forward(&probe.judge(&f), &f, "vibrate")
        },
    ));

    let url_tally: RefCell<BTreeMap<&str, usize>> = RefCell::default();
    // URLs: each placement forward; the reverse (check_url refuses what
    // FCALL takes, or takes what FCALL refuses) on the top-level fields.
    findings.extend(explore("urls", url_text(), scale * 3 / 5, |url| {
        let mut out = Vec::new();
        for field in ["url", "icon", "image", "badge"] {
            let mut f = base(true);
            f.push((field.into(), url.clone()));
            let verdict = probe.judge(&f);
            out.extend(forward(&verdict, &f, field));
            if let Ok(text) = std::str::from_utf8(url) {
                let rust = check_url(field, text);
                let lua_url_refusal = match &verdict.lua {
                    Ok(_) => None,
                    Err(e) if e.starts_with(&format!("INVALID {field}:")) => Some(e.clone()),
                    Err(_) => continue, // refused for something else
                };
                *url_tally
                    .borrow_mut()
                    .entry(match (rust.is_ok(), lua_url_refusal.is_none()) {
                        (true, true) => "both take",
                        (false, false) => "both refuse",
                        (true, false) => "only check_url takes",
                        (false, true) => "only FCALL takes",
                    })
                    .or_default() += 1;
                match (rust, lua_url_refusal) {
                    (Err(e), None) => out.push((
                        format!(
                            "R {field}: check_url refuses, FCALL takes: {}",
                            blur(&e.message)
                        ),
                        format!("{field}={}: check_url: {e}; FCALL took it", show(url)),
                    )),
                    (Ok(()), Some(e)) => out.push((
                        format!("R {field}: check_url takes, FCALL refuses: {}", blur(&e)),
                        format!("{field}={}: check_url Ok; FCALL: {e}", show(url)),
                    )),
                    _ => {}
                }
            }
        }
        for member in ["url", "icon"] {
            let mut actions = br#"[{"action":"a","title":"A",""#.to_vec();
            actions.extend_from_slice(member.as_bytes());
            actions.extend_from_slice(b"\":");
            actions.extend(json_string(url));
            actions.extend_from_slice(b"}]");
            let mut f = base(true);
            f.push(("actions".into(), actions));
            let group = format!("actions[0].{member}");
            out.extend(forward(&probe.judge(&f), &f, &group));
        }
        out
    }));

    // The URL grammar alone, both ways, on many more URLs (one FCALL each, `image`).
    findings.extend(explore("url grammar", url_text(), scale * 4, |url| {
        let Ok(text) = std::str::from_utf8(url) else {
            return Vec::new();
        };
        let mut f = base(true);
        f.push(("image".into(), url.clone()));
        let lua = probe.fcall(&f);
        if let Ok(id) = &lua {
            probe.read(id);
        }
        let lua_takes = match &lua {
            Ok(_) => true,
            Err(e) if e.starts_with("INVALID image:") => false,
            Err(_) => return Vec::new(),
        };
        let rust = check_url("image", text);
        *url_tally
            .borrow_mut()
            .entry(match (rust.is_ok(), lua_takes) {
                (true, true) => "both take",
                (false, false) => "both refuse",
                (true, false) => "only check_url takes",
                (false, true) => "only FCALL takes",
            })
            .or_default() += 1;
        match (rust, lua) {
            (Err(e), Ok(_)) => vec![(
                format!("R check_url refuses, FCALL takes: {}", blur(&e.message)),
                format!("image={}: check_url: {e}; FCALL took it", show(url)),
            )],
            (Ok(()), Err(e)) => vec![(
                format!("R check_url takes, FCALL refuses: {}", blur(&e)),
                format!("image={}: check_url Ok; FCALL: {e}", show(url)),
            )],
            _ => Vec::new(),
        }
    }));
    println!(
        "URL verdicts (all URL runs, UTF-8 only): {:?}",
        url_tally.borrow()
    );

    // herald's payload at exactly the limit FCALL allows: the worker's must be as long.
    let extras = (
        prop::option::of(data_text()),
        prop::option::of(actions_text()),
        prop::option::of(url_text()),
        prop::option::of(url_text()),
        "(\\PC|[\\x00-\\x1f\"\\\\\u{7f}\u{a0}\u{2028}])*",
        publish_at(),
        any::<bool>(),
    );
    findings.extend(explore(
        "payload at the limit",
        extras,
        scale / 3,
        |(data, actions, url, image, body, publish_at, with_id)| {
            let mut f = base(true);
            if *with_id {
                f.push(("id".into(), probe.next_id().into_bytes()));
            }
            for (name, value) in [
                ("data", data),
                ("actions", actions),
                ("url", url),
                ("image", image),
            ] {
                if let Some(v) = value {
                    f.push((name.into(), v.clone()));
                }
            }
            if let Some(at) = publish_at {
                f.push(("publish_at".into(), at.clone().into_bytes()));
            }
            let Some(f) = at_limit(&probe, &f, body.as_bytes()) else {
                return Vec::new(); // refused for something else
            };
            let verdict = probe.judge(&f);
            let mut out = forward(&verdict, &f, "payload");
            if let Some(Ok(len)) = verdict.rust {
                // Without an id, FCALL counts the derived one at its longest
                // (a 20-digit sequence); here the sequence has 1 digit.
                let slack = if *with_id { 0 } else { 19 };
                if len + slack < MAX_PAYLOAD_BYTES {
                    out.push((
                        "U payload: FCALL counts more than the worker's payload".into(),
                        format!(
                            "Lua counted {MAX_PAYLOAD_BYTES}, payload {len}: {}",
                            show_fields(&f)
                        ),
                    ));
                }
            }
            if verdict
                .lua
                .as_ref()
                .is_err_and(|e| e.contains("push payload"))
            {
                out.push((
                    format!(
                        "? exact padding refused: {}",
                        blur(verdict.lua.as_ref().unwrap_err())
                    ),
                    show_fields(&f),
                ));
            }
            out
        },
    ));

    // Hand-picked minimal inputs (each side's answer printed; mismatches reported).
    let mut picked: Vec<(String, Fields)> = Vec::new();
    let with = |extra: &[(&str, &[u8])], title: bool| -> Fields {
        let mut f = base(title);
        f.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_vec())));
        f
    };
    for number in [
        "1.7976931348623157e308",
        "1.7976931348623158e308",
        "1.797693134862315708e308",
        "17976931348623157e292",
        "-1.7976931348623157e308",
        "1.7976931348623e308",
        "1.797e308",
        "1.79e308",
        "1e308",
    ] {
        picked.push((
            format!("data {number}"),
            with(&[("data", number.as_bytes())], true),
        ));
    }
    for actions in [
        r#"[{"action":"a","\u0061ction":"b","title":"t"}]"#,
        r#"[{"action":"a","title":"t","ti\u0074le":"u"}]"#,
        r#"[{"action":"a","title":"t","url":"/x","ur\u006c":"/y"}]"#,
    ] {
        picked.push((
            format!("actions {actions}"),
            with(&[("actions", actions.as_bytes())], true),
        ));
    }
    for (field, value) in [
        ("data", &b"\"\xff\""[..]),
        ("url", b"/\xff"),
        ("image", b"https://a.example/\xff"),
        ("title", b"\xff"),
        ("body", b"\xff"),
    ] {
        picked.push((format!("non-UTF-8 {field}"), with(&[(field, value)], true)));
    }
    for at in [
        "2025-01-01T00:00:00Z",
        "0000-01-01T00:00:00+00:01",
        "0000-01-01T00:00:00.5+23:59",
        "2025-06-30T23:59:60Z",
        "2025-01-01 00:00:00Z",
        "2025-01-01T00:00:00.1234567891234z",
    ] {
        let f = with(&[("publish_at", at.as_bytes())], true);
        match at_limit(&probe, &f, b"") {
            Some(exact) => picked.push((
                format!("payload exactly at the limit, publish_at {at}"),
                exact,
            )),
            None => println!("publish_at {at}: FCALL refuses: {:?}", probe.fcall(&f)),
        }
    }
    for (label, f) in &picked {
        let verdict = probe.judge(f);
        println!(
            "picked {label}: FCALL {:?}; worker {:?}",
            verdict.lua, verdict.rust
        );
        for (group, detail) in forward(&verdict, f, "picked") {
            findings.push(Finding {
                group: format!("picked {label}: {group}"),
                count: 1,
                minimal: detail,
            });
        }
    }

    // A derived id ('xadd-<ms>-<seq>') longer than a short one (FCALL counts
    // the longest, a 20-digit sequence, so none is refused): entries
    // without id, each exactly at the limit by FCALL's count, once a stream id's
    // sequence passes 9 (more than 10 entries in one millisecond, or a clock
    // stepped back: Redis then keeps the last id's millisecond and counts up).
    // XSETID puts the stream there (last, as it moves the stream's ids ahead).
    {
        let mut over = base(true);
        over.push(("body".into(), vec![b'x'; 4000]));
        let refusal = probe.fcall(&over).expect_err("too big");
        let size: usize = refusal
            .split("the push payload would be ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .expect("a size");
        let mut exact = base(true);
        exact.push(("body".into(), vec![b'x'; 4000 - (size - MAX_PAYLOAD_BYTES)]));
        let ahead = chrono::Utc::now().timestamp_millis() + 60_000;
        let _: () = redis::cmd("XSETID")
            .arg(&probe.stream)
            .arg(format!("{ahead}-8"))
            .query(&mut *probe.conn.borrow_mut())
            .expect("XSETID");
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push((probe.fcall(&exact).expect("FCALL takes it"), String::new()));
        }
        let mut refused = Vec::new();
        for (id, _) in &answers {
            let entry = probe.read(id);
            if let Err(e) = Event::from_fields(&entry, &probe.defaults) {
                refused.push(format!("{id}: {}: {}", e.field, e.message));
            }
        }
        println!(
            "derived ids: {} of {} entries refused by the worker (ids {} .. {})",
            refused.len(),
            answers.len(),
            answers[0].0,
            answers[answers.len() - 1].0
        );
        if let Some(first) = refused.first() {
            findings.push(Finding {
                group: "derived id: a stream id with seq >= 10 is longer than FCALL counted".into(),
                count: refused.len(),
                minimal: format!("{} (no id, body x*{}, exactly {MAX_PAYLOAD_BYTES} by FCALL's count) after XSETID {ahead}-8: {first}", show_fields(&base(true)), exact[3].1.len()),
            });
        }
    }

    println!(
        "error replies redis-rs could not parse (counted as refusals): {:#?}",
        probe.unparseable.borrow()
    );
    let report: Vec<String> = findings
        .iter()
        .map(|f| format!("[{}x] {}\n    {}", f.count, f.group, f.minimal))
        .collect();
    assert!(
        findings.is_empty(),
        "{} mismatch groups:\n{}",
        findings.len(),
        report.join("\n")
    );
}
