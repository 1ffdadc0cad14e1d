use super::*;

fn norm(raw: &str) -> Result<String, Refused> {
    path(raw, PathPolicy::default()).map(Cow::into_owned)
}

fn keep(raw: &str) -> Result<String, Refused> {
    let policy = PathPolicy { merge_slashes: false, escaped_slashes: EscapedSlashes::Keep };
    path(raw, policy).map(Cow::into_owned)
}

#[test]
fn every_spelling_of_a_protected_path_becomes_the_same_path() {
    for trick in [
        "/api/users/admin/x",
        "/api/users/%61dmin/x",
        "/api/users/%61%64%6D%69%6e/x",
        "/api/users/./admin/x",
        "/api/users/x/../admin/x",
        "/api/users//admin/x",
        "/api//users///admin/x",
        "/%2e/api/users/admin/x",
        "/api/users/%2e/admin/x",
        "/api/users/x/%2e%2e/admin/x",
        "/api/users/x/%2E%2E/admin/x",
        "/api/users/x/.%2e/admin/x",
        "/../api/users/admin/x",
        "/api/../../api/users/admin/x",
    ] {
        assert_eq!(norm(trick).as_deref(), Ok("/api/users/admin/x"), "{trick}");
    }
}

#[test]
fn clean_paths_are_borrowed_and_unchanged() {
    for clean in ["/", "/a", "/a/b/", "/v1.2/x.json", "/a/.well-known/x", "/a/%C3%A9", "*"] {
        assert!(matches!(path(clean, PathPolicy::default()), Ok(Cow::Borrowed(p)) if p == clean));
    }
}

#[test]
fn dot_segments_follow_rfc_3986() {
    assert_eq!(norm("/a/b/c/./../../g").as_deref(), Ok("/a/g"));
    assert_eq!(norm("/a/..").as_deref(), Ok("/"));
    assert_eq!(norm("/a/b/..").as_deref(), Ok("/a/"));
    assert_eq!(norm("/a/.").as_deref(), Ok("/a/"));
    assert_eq!(norm("/..").as_deref(), Ok("/"));
    assert_eq!(norm("/a/..b/.c").as_deref(), Ok("/a/..b/.c"));
    assert_eq!(norm("/a//").as_deref(), Ok("/a/"));
    assert_eq!(norm("//").as_deref(), Ok("/"));
}

#[test]
fn escapes_other_than_unreserved_stay_encoded_in_upper_case() {
    assert_eq!(norm("/a%20b/%c3%a9").as_deref(), Ok("/a%20b/%C3%A9"));
    assert_eq!(norm("/a%3bb").as_deref(), Ok("/a%3Bb"));
    assert_eq!(norm("/%7euser").as_deref(), Ok("/~user"));
}

#[test]
fn malformed_escapes_and_slashes_in_disguise_are_refused() {
    for bad in ["/a%", "/a%2", "/a%zz", "/a%2g/b"] {
        assert_eq!(norm(bad), Err(Refused::BadEscape), "{bad}");
    }
    for bad in ["/api%2fusers/admin", "/a/%2F..%2Fadmin", "/a%5cb", "/a%5C..%5Cadmin"] {
        assert_eq!(norm(bad), Err(Refused::EscapedSlash), "{bad}");
    }
    assert_eq!(norm("/a\\..\\admin"), Err(Refused::Backslash));
    assert_eq!(keep("/a\\b"), Err(Refused::Backslash));
}

#[test]
fn kept_escaped_slashes_never_separate_segments() {
    assert_eq!(keep("/api%2fusers/x").as_deref(), Ok("/api%2Fusers/x"));
    // `..%2F` is one segment, not a dot segment.
    assert_eq!(keep("/a/..%2Fadmin").as_deref(), Ok("/a/..%2Fadmin"));
    // Merging off: empty segments stay.
    assert_eq!(keep("/a//b/./c").as_deref(), Ok("/a//b/c"));
}

fn head(req: http::request::Builder) -> http::request::Parts {
    req.body(()).expect("a valid request").into_parts().0
}

#[test]
fn hosts_are_lower_cased_lose_a_trailing_dot_and_must_agree() {
    let mut p = head(http::Request::get("/").header("host", "API.Example.com.:8080"));
    request(&mut p, PathPolicy::default()).unwrap();
    assert_eq!(p.headers["host"], "api.example.com:8080");

    let mut p = head(http::Request::get("/").header("host", "a.test").header("host", "b.test"));
    assert_eq!(request(&mut p, PathPolicy::default()), Err(Refused::DuplicateHost));

    let mut p = head(http::Request::get("http://a.test/x").header("host", "b.test"));
    assert_eq!(request(&mut p, PathPolicy::default()), Err(Refused::HostMismatch));

    // The authority alone (HTTP/2) becomes the Host header.
    let mut p = head(http::Request::get("http://A.test./x"));
    request(&mut p, PathPolicy::default()).unwrap();
    assert_eq!(p.headers["host"], "a.test");

    let mut p = head(http::Request::get("http://a.test/x").header("host", "A.TEST."));
    request(&mut p, PathPolicy::default()).unwrap();
    assert_eq!(p.headers["host"], "a.test");

    for bad in ["a b", "a..b", ".", "a.test:", "a.test:x", "[::1", "a/b", "a@b"] {
        let mut p = head(http::Request::get("/").header("host", bad));
        assert_eq!(request(&mut p, PathPolicy::default()), Err(Refused::BadHost), "{bad}");
    }
    for good in ["[::1]:80", "[::1]", "127.0.0.1:8080", "internal_host"] {
        let mut p = head(http::Request::get("/").header("host", good));
        assert_eq!(request(&mut p, PathPolicy::default()), Ok(()), "{good}");
    }
}

#[test]
fn methods_that_differ_from_a_standard_one_only_in_case_are_refused() {
    for m in ["delete", "Get", "pAtCh"] {
        let mut p = head(http::Request::builder().method(m).uri("/"));
        assert_eq!(request(&mut p, PathPolicy::default()), Err(Refused::MethodCase(m.into())));
    }
    for m in ["DELETE", "PROPFIND", "purge"] {
        let mut p = head(http::Request::builder().method(m).uri("/"));
        assert_eq!(request(&mut p, PathPolicy::default()), Ok(()), "{m}");
    }
}

#[test]
fn the_query_survives_a_path_rewrite() {
    let mut p = head(http::Request::get("/a/./b?x=%2e&y=1"));
    request(&mut p, PathPolicy::default()).unwrap();
    assert_eq!(p.uri.path(), "/a/b");
    assert_eq!(p.uri.query(), Some("x=%2e&y=1"));
}
