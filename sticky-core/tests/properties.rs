//! Properties over arbitrary requests:
//! (a) `decide` never panics;
//! (b) every emitted `fly-replay` parses under Fly's grammar with only the
//!     expected fields and a validated target, whatever the request holds;
//! (c) a request carrying a replay marker is never replayed again;
//! (d) with signing on, a tampered, truncated or foreign-key cookie is never trusted;
//! (e) the pin cookie is read as RFC 6265 pairs, wherever it sits among
//!     others and however often (the scanner's shortcuts change nothing).

mod common;

use common::{Req, S, T};
use proptest::prelude::*;
use sticky_core::{Env, Marker, Outcome, Sticky, TargetFormat};

/// Bytes an attacker would try: separators, quotes, encodings, CR/LF, IDs.
fn nasty_text() -> impl Strategy<Value = String> {
    let atoms = prop_oneof![
        Just(S.to_owned()),
        Just(T.to_owned()),
        Just(";".to_owned()),
        Just(",".to_owned()),
        Just("=".to_owned()),
        Just("\"".to_owned()),
        Just("%3B".to_owned()),
        Just("%2C".to_owned()),
        Just("%3D".to_owned()),
        Just("app=".to_owned()),
        Just("fly-machine-id=".to_owned()),
        Just("fly_instance_id=".to_owned()),
        Just("\r\n".to_owned()),
        Just(" ".to_owned()),
        Just("&".to_owned()),
        Just("\u{0}".to_owned()),
        Just("é".to_owned()),
        "[0-9a-f]{1,16}",
        "\\PC{0,8}",
    ];
    prop::collection::vec(atoms, 0..12).prop_map(|v| v.concat())
}

fn nasty_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => nasty_text().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => (0usize..20_000).prop_map(|n| format!("fly-machine-id={}", "9".repeat(n)).into_bytes()),
    ]
}

const NAMES: &[&str] = &[
    "cookie",
    "Cookie",
    "x-forwarded-proto",
    "content-length",
    "transfer-encoding",
    "fly-replay-src",
    "fly-replay-failed",
    "fly-preferred-instance-unavailable",
    "fly-replay-cache-status",
    "x-machine",
    "upgrade",
    "access-control-request-method",
];

fn request() -> impl Strategy<Value = Req> {
    (
        prop::sample::select(vec![
            "GET", "POST", "PUT", "PATCH", "OPTIONS", "HEAD", "DELETE", "get", "",
        ]),
        nasty_text(),
        prop::option::of(nasty_text()),
        prop::collection::vec((prop::sample::select(NAMES), nasty_bytes()), 0..8),
    )
        .prop_map(|(method, path, query, headers)| {
            let mut req = Req::new(method, &format!("/{path}"));
            req.query = query;
            for (name, value) in headers {
                req = req.header(name, value);
            }
            req
        })
}

/// The engines every case runs on, undrained. Built once per test thread:
/// the key engine's table (65,536 buckets) is computed at build time, and
/// each test runs its cases on one thread, so a drain never leaks across
/// tests.
fn engines() -> Vec<Sticky> {
    thread_local! {
        static ENGINES: Vec<Sticky> = build_engines();
    }
    ENGINES.with(|engines| {
        for sticky in engines {
            sticky.undrain();
        }
        engines.clone()
    })
}

fn build_engines() -> Vec<Sticky> {
    let env = || Env::machine(S);
    vec![
        Sticky::builder().build(env()).unwrap(),
        Sticky::builder()
            .replay(
                sticky_core::Replay::instance()
                    .timeout(std::time::Duration::from_secs(2))
                    .fallback(sticky_core::Fallback::PreferSelf),
            )
            .replay_state("s1")
            .header_source("x-machine")
            .exclude(["/health", "/static/**"])
            .build(env())
            .unwrap(),
        Sticky::builder()
            .sources([sticky_core::Source::Key, sticky_core::Source::Cookie])
            .key_source(sticky_core::KeySource::Header("x-machine".into()))
            .key_source(sticky_core::KeySource::Cookie("fly-machine-id".into()))
            .peers([S, T, "e784079b449483"].map(sticky_core::Peer::new))
            .build(env())
            .unwrap(),
        Sticky::builder()
            .target_format(TargetFormat::custom(|_| true))
            .sources([
                sticky_core::Source::Header,
                sticky_core::Source::Query,
                sticky_core::Source::Cookie,
            ])
            .header_source("x-machine")
            .build(env())
            .unwrap(),
    ]
}

/// Fly's grammar: `key=value` pairs joined by `;`, known keys, no duplicates,
/// values without separators, quotes, whitespace or control bytes.
fn parse_fly_replay(value: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut fields: Vec<(&str, &str)> = Vec::new();
    for part in value.split(';') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("no '=' in {part:?}"))?;
        if !matches!(
            k,
            "instance"
                | "prefer_instance"
                | "region"
                | "app"
                | "state"
                | "elsewhere"
                | "timeout"
                | "fallback"
        ) {
            return Err(format!("unknown key {k:?}"));
        }
        if v.is_empty()
            || v.bytes().any(|b| {
                !(0x21..=0x7e).contains(&b) || matches!(b, b';' | b',' | b'=' | b'"' | b'\\')
            })
        {
            return Err(format!("bad value {v:?}"));
        }
        if fields.iter().any(|(seen, _)| *seen == k) {
            return Err(format!("duplicate {k:?}"));
        }
        fields.push((k, v));
    }
    Ok(fields)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decide_never_panics_and_replays_are_well_formed(req in request(), drain in any::<bool>()) {
        for (i, sticky) in engines().into_iter().enumerate() {
            if drain { sticky.drain(); }
            let d = sticky.decide(&req);
            if let Outcome::Replay(sc, _) = d.outcome() {
                prop_assert!(sc.status() != 101 && (200..=599).contains(&sc.status()));
                let value = sc.fly_replay().expect("a replay carries fly-replay");
                let fields = parse_fly_replay(value).map_err(|e| TestCaseError::fail(format!("{e} in {value:?}")))?;
                for (k, v) in &fields {
                    match *k {
                        "instance" | "prefer_instance" => {
                            prop_assert!(i == 3 || v.len() == 14, "target {v:?}");
                            prop_assert_ne!(*v, S, "never a replay to ourselves");
                        }
                        "elsewhere" => prop_assert_eq!(*v, "true"),
                        "timeout" | "fallback" | "state" => prop_assert_eq!(i, 1),
                        other => prop_assert!(false, "unexpected field {other}"),
                    }
                }
                prop_assert!(fields.iter().any(|(k, _)| matches!(*k, "instance" | "prefer_instance" | "elsewhere")));
                prop_assert!(d.set_cookie().is_none());
            }
            if let Some(c) = d.set_cookie() {
                let expected = format!("fly-machine-id={S};");
                prop_assert!(c.value().starts_with(&expected));
            }
        }
    }

    #[test]
    fn marked_requests_are_never_replayed(req in request(), marker in prop::sample::select(Marker::ALL.to_vec()), value in nasty_bytes(), drain in any::<bool>()) {
        let req = req.header(marker.header(), value);
        for sticky in engines() {
            if drain { sticky.drain(); }
            let d = sticky.decide(&req);
            prop_assert!(!matches!(d.outcome(), Outcome::Replay(..)), "{d:?}");
        }
    }
}

/// One cookie pair, or something that only looks like one.
fn cookie_pair() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "fly-machine-id",
        "xfly-machine-id",
        "fly-machine-i",
        " fly-machine-id",
        "\tfly-machine-id",
        "session",
        "a",
        "",
    ]);
    let sep = prop::sample::select(vec!["=", "= ", "", "=="]);
    let value = prop_oneof![
        Just(S.to_owned()),
        Just(T.to_owned()),
        Just(format!("{S}x")),
        Just(format!("{S} ")),
        Just(format!("x{S}")),
        Just(format!("fly-machine-id={S}")),
        Just(String::new()),
        "[0-9a-f]{13,15}",
        "[ -~]{0,6}",
    ];
    (name, sep, value).prop_map(|(n, s, v)| format!("{n}{s}{v}"))
}

/// Pin values in order, read the plain way: split at `;`, drop the
/// whitespace before a name, take what follows `fly-machine-id=` trimmed.
fn pins(fields: &[String]) -> Vec<String> {
    let ows: &[char] = &[' ', '\t'];
    fields
        .iter()
        .flat_map(|f| f.split(';'))
        .filter_map(|pair| pair.trim_start_matches(ows).strip_prefix("fly-machine-id="))
        .map(|v| v.trim_matches(ows).to_owned())
        .collect()
}

fn machine_id(v: &str) -> bool {
    v.len() == 14 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn the_pin_cookie_is_read_as_pairs(
        fields in prop::collection::vec(
            (prop::collection::vec(cookie_pair(), 0..6), prop::sample::select(vec!["; ", ";", ";  ", " ; "])),
            1..3,
        ),
    ) {
        use sticky_core::{Reason, Source};
        let fields: Vec<String> = fields.into_iter().map(|(pairs, joint)| pairs.join(joint)).collect();
        let req = fields.iter().fold(Req::get("/"), |r, f| r.header("cookie", f));
        let pins = pins(&fields);
        let d = Sticky::builder().build(Env::machine(S)).unwrap().decide(&req);
        let expected = if pins.iter().any(|v| v == S) {
            "stick"
        } else if let Some(t) = pins.iter().find(|v| machine_id(v)) {
            let replay = d.short_circuit().and_then(|sc| sc.fly_replay()).map(str::to_owned);
            prop_assert_eq!(replay, Some(format!("prefer_instance={t}")), "{:?}", fields);
            "replay"
        } else if pins.is_empty() {
            "no target"
        } else {
            "invalid"
        };
        let got = match d.outcome() {
            Outcome::Stick(Reason::PinnedHere(Source::Cookie)) => "stick",
            Outcome::Replay(_, Reason::PinnedElsewhere(Source::Cookie)) => "replay",
            Outcome::SetCookie(_, Reason::NoTarget) => "no target",
            Outcome::SetCookie(_, Reason::InvalidTarget(Source::Cookie, _)) => "invalid",
            other => return Err(TestCaseError::fail(format!("{other:?} for {fields:?}"))),
        };
        prop_assert_eq!(got, expected, "{:?} (pins {:?})", fields, pins);
    }
}

#[cfg(feature = "signed")]
mod signed {
    use super::*;
    use sticky_core::{Reason, Source};

    const KEY: &[u8] = b"a signing key that is at least thirty-two bytes";
    const FOREIGN: &[u8] = b"somebody else's key, also thirty-two bytes long";

    fn signed(key: &[u8], id: &str) -> Sticky {
        Sticky::builder()
            .signing_keys([key])
            .build(Env::machine(id))
            .unwrap()
    }

    fn cookie_value(s: &Sticky) -> String {
        let d = s.decide_at(&Req::get("/"), 1000);
        d.set_cookie()
            .unwrap()
            .value()
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn tampered_truncated_or_foreign_cookies_are_never_trusted(
            edit in 0usize..200,
            byte in any::<u8>(),
            cut in 1usize..80,
            mode in 0u8..3,
        ) {
            let here = signed(KEY, S);
            let genuine = cookie_value(&signed(KEY, T));
            let forged = match mode {
                0 => {
                    let mut b = genuine.clone().into_bytes();
                    let i = edit % b.len();
                    prop_assume!(b[i] != byte);
                    b[i] = byte;
                    String::from_utf8_lossy(&b).into_owned()
                }
                1 => genuine[..genuine.len().saturating_sub(cut)].to_owned(),
                _ => cookie_value(&signed(FOREIGN, T)),
            };
            let d = here.decide_at(&Req::get("/").cookie(&forged), 1001);
            prop_assert!(
                matches!(d.reason(), Reason::InvalidTarget(Source::Cookie, _) | Reason::NoTarget),
                "forged {forged:?} was trusted: {d:?}"
            );
            prop_assert!(!matches!(d.outcome(), Outcome::Replay(..)));
        }
    }
}
