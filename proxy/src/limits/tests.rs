use super::*;
use crate::config::limits::BodyLimitRoute;

fn parts(uri: &str, headers: &[(&str, String)]) -> http::request::Parts {
    let mut b = http::Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(()).unwrap().into_parts().0
}

fn limits() -> Limits {
    Limits::new(&LimitsConfig {
        max_header_bytes: 1000,
        max_headers: 5,
        max_uri_bytes: 100,
        body: vec![
            BodyLimitRoute {
                path_prefix: "/up".into(),
                max_body_bytes: 10,
            },
            BodyLimitRoute {
                path_prefix: "/upload/big".into(),
                max_body_bytes: 1000,
            },
        ],
        ..LimitsConfig::default()
    })
}

#[test]
fn head_checks_name_the_limit() {
    let l = limits();
    assert_eq!(l.check_request(&mut parts("/a", &[])).unwrap(), None);
    let long = format!("/{}", "a".repeat(100));
    let e = l.check_request(&mut parts(&long, &[])).unwrap_err();
    assert_eq!(e.cause, Cause::UriTooLong);
    assert!(e.detail.contains("limits.max_uri_bytes"), "{}", e.detail);
    let many: Vec<_> = (0..6).map(|i| ("x-h", i.to_string())).collect();
    let e = l.check_request(&mut parts("/a", &many)).unwrap_err();
    assert_eq!(e.cause, Cause::RequestHeaderTooLarge);
    assert!(e.detail.contains("limits.max_headers"), "{}", e.detail);
    let big = [("x-big", "v".repeat(1000))];
    let e = l.check_request(&mut parts("/a", &big)).unwrap_err();
    assert_eq!(e.cause, Cause::RequestHeaderTooLarge);
    assert!(e.detail.contains("limits.max_header_bytes"), "{}", e.detail);
}

#[test]
fn body_limits_use_the_longest_prefix_and_the_declared_length() {
    let l = limits();
    assert_eq!(l.body_limit("/upload/big/x"), Some(1000));
    assert_eq!(l.body_limit("/upload"), Some(10));
    assert_eq!(l.body_limit("/other"), None);
    let ok = [("content-length", "10".to_string())];
    assert_eq!(l.check_request(&mut parts("/up", &ok)).unwrap(), Some(10));
    let over = [("content-length", "11".to_string())];
    let e = l.check_request(&mut parts("/up", &over)).unwrap_err();
    assert_eq!(e.cause, Cause::PayloadTooLarge);
    assert_eq!(e.cause.status(), 413);
}

#[test]
fn connection_slots_per_listener_and_in_total() {
    let l = Limits::new(&LimitsConfig {
        max_connections: 3,
        max_connections_per_listener: 2,
        ..LimitsConfig::default()
    });
    let (a, b) = (l.listener(), l.listener());
    let a1 = a.admit().unwrap();
    let _a2 = a.admit().unwrap();
    assert!(a.admit().is_none(), "listener limit");
    let _b1 = b.admit().unwrap();
    assert!(b.admit().is_none(), "total limit");
    drop(a1);
    assert!(b.admit().is_some(), "a freed slot is reusable");
}

#[test]
fn the_parser_header_cut_off_stays_above_the_limit_and_within_hypers_inline_arrays() {
    let cut_off = |max_headers| {
        ServerLimits::from_config(&LimitsConfig {
            max_headers,
            ..LimitsConfig::default()
        })
        .parser_max_headers
    };
    assert_eq!(cut_off(5), 10);
    assert_eq!(cut_off(LimitsConfig::default().max_headers), 100);
    assert_eq!(cut_off(100), 100);
    assert_eq!(cut_off(150), 150, "never below the configured limit");
}
