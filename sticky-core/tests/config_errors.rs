//! One case per configuration error: each is refused at build time with a
//! message naming the setting.

use std::time::Duration;

use sticky_core::{ConfigError, Env, Replay, SameSite, Secure, Source, Sticky, TargetFormat};

fn refused(builder: sticky_core::Builder, setting: &str) -> ConfigError {
    let err = builder
        .build(Env::machine("148ed599c14189"))
        .expect_err(setting);
    assert!(
        err.to_string().contains(setting),
        "{err} should name {setting}"
    );
    err
}

#[test]
fn every_invalid_setting_is_refused_by_name() {
    let b = Sticky::builder;
    refused(b().cookie_name("bad name"), "cookie_name");
    refused(b().cookie_name(""), "cookie_name");
    refused(b().cookie_name("a;b"), "cookie_name");
    refused(b().cookie_path("app"), "cookie_path");
    refused(b().cookie_path("/a;b"), "cookie_path");
    refused(b().cookie_domain("a b.com"), "cookie_domain");
    refused(b().cookie_domain(""), "cookie_domain");
    refused(b().max_age(Duration::ZERO), "max_age");
    refused(b().max_age(Duration::from_secs(401 * 86400)), "max_age");
    refused(b().same_site(SameSite::None), "same_site");
    refused(
        b().same_site(SameSite::None).secure(Secure::Auto),
        "same_site",
    );
    refused(
        b().cookie_name("__Host-m").cookie_domain("example.com"),
        "cookie_domain",
    );
    refused(
        b().cookie_name("__Host-m").cookie_path("/app"),
        "cookie_path",
    );
    refused(b().cookie_name("__Host-m").secure(Secure::Never), "Secure");
    refused(
        b().cookie_name("__Secure-m").secure(Secure::Never),
        "Secure",
    );
    refused(b().query_param(""), "query_param");
    refused(b().query_param("a&b"), "query_param");
    refused(b().header_source("bad header"), "header_source");
    refused(b().sources([]), "sources");
    refused(b().sources([Source::Cookie, Source::Cookie]), "sources");
    refused(b().sources([Source::Header]), "sources");
    refused(b().replay_status(101), "replay_status");
    refused(b().replay_status(199), "replay_status");
    refused(b().replay_status(600), "replay_status");
    refused(b().replay_state("a;app=x"), "replay_state");
    refused(b().replay_state(""), "replay_state");
    refused(
        b().replay(Replay::instance().timeout(Duration::ZERO)),
        "timeout",
    );
    refused(b().body_limit(1_000_001), "body_limit");
    refused(b().include(["/a/[b"]), "include");
    refused(b().exclude(["/a/{b"]), "exclude");
    refused(b().skip_methods(["GE T"]), "skip_methods");
    refused(
        b().refresh(sticky_core::Refresh::After(Duration::from_secs(60))),
        "refresh",
    );
    assert!(
        "sometimes"
            .parse::<SameSite>()
            .unwrap_err()
            .to_string()
            .contains("same_site")
    );
}

#[test]
fn the_machine_id_must_match_the_format() {
    let err = Sticky::builder()
        .build(Env::machine("not-hex"))
        .unwrap_err();
    assert!(matches!(err, ConfigError::InvalidMachineId(_)));
    assert!(err.to_string().contains("FLY_MACHINE_ID"));
    // A custom format that accepts it builds.
    let ok = Sticky::builder()
        .target_format(TargetFormat::custom(|v| v.len() < 10))
        .build(Env::machine("not-hex"));
    assert!(ok.is_ok());
    // A format can never admit separators, even for our own ID.
    let err = Sticky::builder()
        .target_format(TargetFormat::custom(|_| true))
        .build(Env::machine("a;app=b"))
        .unwrap_err();
    assert!(matches!(err, ConfigError::InvalidMachineId(_)));
}

#[test]
fn disabled_engines_still_validate() {
    assert!(
        Sticky::builder()
            .replay_status(101)
            .build(Env::default())
            .is_err()
    );
}

#[cfg(feature = "signed")]
#[test]
fn signing_settings() {
    let b = Sticky::builder;
    refused(b().signing_keys([b""]), "signing_keys");
    refused(b().signing_keys([[7u8; 16]]), "signing_keys");
    refused(
        b().signing_keys([[7u8; 32]]).max_lifetime(Duration::ZERO),
        "max_lifetime",
    );
    refused(
        b().signing_keys([[7u8; 32]])
            .idle_timeout(Duration::from_millis(10)),
        "idle_timeout",
    );
    refused(b().max_lifetime(Duration::from_secs(60)), "max_lifetime");
    refused(b().idle_timeout(Duration::from_secs(60)), "idle_timeout");
}
