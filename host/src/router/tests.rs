use super::*;

fn exact(p: &str) -> Rule {
    Rule::path(PathPattern::parse(p, false).unwrap())
}
fn prefix(p: &str) -> Rule {
    Rule::path(PathPattern::parse(p, true).unwrap())
}

struct Req {
    method: Method,
    path: String,
    host: Option<String>,
    headers: HeaderMap,
    query: Option<String>,
}

fn req(path: &str) -> Req {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (path.to_owned(), None),
    };
    Req { method: Method::GET, path, host: None, headers: HeaderMap::new(), query }
}

impl Req {
    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            path: &self.path,
            host: self.host.as_deref(),
            headers: &self.headers,
            query: self.query.as_deref(),
            listener: "default",
        }
    }
}

fn find(r: &Router<&'static str>, q: &Req) -> Option<&'static str> {
    r.find(&q.view()).map(|f| *f.value)
}

#[test]
fn prefixes_match_on_segment_boundaries_and_the_longest_wins() {
    let r = Router::new([
        (prefix("/"), "root"),
        (prefix("/api/users"), "users"),
        (prefix("/api/users/admin/"), "admin"),
        (prefix("/api"), "api"),
    ]);
    for (path, want) in [
        ("/api/users", "users"),
        ("/api/users/", "users"),
        ("/api/users/7", "users"),
        ("/api/users/admin", "admin"),
        ("/api/users/admin/x", "admin"),
        ("/api/usersx", "api"),
        ("/apix", "root"),
        ("/", "root"),
    ] {
        assert_eq!(find(&r, &req(path)), Some(want), "{path}");
    }
    let r = Router::new([(prefix("/api"), "api")]);
    assert_eq!(find(&r, &req("/other")), None);
    assert_eq!(find(&r, &req("/ap")), None);
}

#[test]
fn exact_paths_parameters_and_catch_alls() {
    let r = Router::new([
        (exact("/users/{id}"), "user"),
        (exact("/users/admin"), "admin"),
        (exact("/users/{id}/posts/{post}"), "post"),
        (exact("/files/{*path}"), "files"),
        (prefix("/users"), "users-prefix"),
    ]);
    let found = r.find(&req("/users/42/posts/hello%20world").view()).unwrap();
    assert_eq!(*found.value, "post");
    let params: Vec<_> = found.params.iter().map(|(k, v)| (&**k, v.as_str())).collect();
    assert_eq!(params, [("id", "42"), ("post", "hello world")]);
    assert_eq!(find(&r, &req("/users/admin")), Some("admin"));
    assert_eq!(find(&r, &req("/users/7")), Some("user"));
    // A parameter and a catch-all in one place need two tree layers; both still work.
    assert_eq!(find(&r, &req("/users/7/other")), Some("users-prefix"));
    assert_eq!(find(&r, &req("/users")), Some("users-prefix"));
    let found = r.find(&req("/files/a/b.txt").view()).unwrap();
    assert_eq!(found.params, [(Arc::from("path"), "a/b.txt".to_owned())]);
    assert_eq!(find(&r, &req("/files/")), None);
    assert_eq!(find(&r, &req("/nope")), None);
}

#[test]
fn hosts_methods_headers_and_query() {
    let mut by_host = prefix("/");
    by_host.hosts = vec![HostPattern::parse("API.example.com").unwrap()];
    let mut wildcard = prefix("/");
    wildcard.hosts = vec![HostPattern::parse("*.example.com").unwrap()];
    let mut post = exact("/items");
    post.methods = vec![Method::POST];
    let mut canary = exact("/items");
    canary.headers = vec![FieldMatch {
        name: HeaderName::from_static("x-canary"),
        value: ValueMatch::Regex(regex::Regex::new("^(1|yes)$").unwrap()),
    }];
    let mut v2 = exact("/items");
    v2.query = vec![FieldMatch { name: "v".into(), value: ValueMatch::Exact("2".into()) }];
    let r = Router::new([
        (prefix("/"), "any"),
        (by_host, "api-host"),
        (wildcard, "wildcard"),
        (post, "post"),
        (canary, "canary"),
        (v2, "v2"),
    ]);
    let with_host = |h: &str| {
        let mut q = req("/x");
        q.host = Some(h.into());
        q
    };
    assert_eq!(find(&r, &with_host("api.example.com")), Some("api-host"));
    assert_eq!(find(&r, &with_host("www.example.com")), Some("wildcard"));
    assert_eq!(find(&r, &with_host("example.com")), Some("any"));
    assert_eq!(find(&r, &with_host("evil-example.com")), Some("any"));
    assert_eq!(find(&r, &req("/items")), Some("any"));
    let mut q = req("/items");
    q.method = Method::POST;
    assert_eq!(find(&r, &q), Some("post"));
    let mut q = req("/items");
    q.headers.insert("x-canary", "yes".parse().unwrap());
    assert_eq!(find(&r, &q), Some("canary"));
    q.headers.insert("x-canary", "no".parse().unwrap());
    assert_eq!(find(&r, &q), Some("any"));
    assert_eq!(find(&r, &req("/items?a=1&v=2")), Some("v2"));
    assert_eq!(find(&r, &req("/items?v=3")), Some("any"));
}

#[test]
fn priority_beats_specificity_and_order_breaks_ties() {
    let mut high = prefix("/");
    high.priority = 10;
    high.headers =
        vec![FieldMatch { name: HeaderName::from_static("x-debug"), value: ValueMatch::Present }];
    let r = Router::new([(exact("/a/b"), "specific"), (high, "debug")]);
    let mut q = req("/a/b");
    assert_eq!(find(&r, &q), Some("specific"));
    q.headers.insert("x-debug", "".parse().unwrap());
    assert_eq!(find(&r, &q), Some("debug"));

    let mut a = exact("/x");
    a.headers = vec![FieldMatch { name: HeaderName::from_static("a"), value: ValueMatch::Present }];
    let mut b = exact("/x");
    b.headers = vec![FieldMatch { name: HeaderName::from_static("b"), value: ValueMatch::Present }];
    let r = Router::new([(a, "a"), (b, "b")]);
    let mut q = req("/x");
    q.headers.insert("a", "1".parse().unwrap());
    q.headers.insert("b", "1".parse().unwrap());
    assert_eq!(find(&r, &q), Some("a"));
}

#[test]
fn analysis_reports_unreachable_and_ambiguous_routes() {
    let mut catch_everything = prefix("/");
    catch_everything.priority = 1;
    let rules = [exact("/a"), catch_everything, exact("/b")];
    assert_eq!(
        analyze(&rules),
        [Finding::Unreachable { shadowed: 0, by: 1 }, Finding::Unreachable { shadowed: 2, by: 1 }]
    );
    assert_eq!(
        analyze(&[prefix("/api"), prefix("/api/")]),
        [Finding::Unreachable { shadowed: 1, by: 0 }]
    );
    let mut a = exact("/x");
    a.headers = vec![FieldMatch { name: HeaderName::from_static("a"), value: ValueMatch::Present }];
    let mut b = exact("/x");
    b.headers = vec![FieldMatch { name: HeaderName::from_static("b"), value: ValueMatch::Present }];
    assert_eq!(analyze(&[a, b]), [Finding::Ambiguous { first: 0, second: 1 }]);
    let mut get = exact("/x");
    get.methods = vec![Method::GET];
    let mut post = exact("/x");
    post.methods = vec![Method::POST];
    assert_eq!(analyze(&[get, post, prefix("/"), exact("/users/{id}")]), []);
}

/// The tree, its layers and the precomputed candidate lists must agree with the plain
/// definition: of all rules matching a request, the best ranked wins.
#[test]
fn agrees_with_a_linear_scan_on_random_tables() {
    let statics = ["a", "b", "users", ""];
    let mut rng = fastrand::Rng::with_seed(7);
    let segment = |rng: &mut fastrand::Rng, i: usize, last: bool, prefix: bool| -> String {
        match rng.u8(0..10) {
            0..=5 => statics[rng.usize(0..statics.len() - 1)].to_owned(),
            6..=8 => format!("{{p{i}}}"),
            _ if last && !prefix => format!("{{*c{i}}}"),
            _ => "b".into(),
        }
    };
    for round in 0..300 {
        let mut rules = Vec::new();
        for _ in 0..rng.usize(1..9) {
            let is_prefix = rng.bool();
            let n = rng.usize(0..4);
            let segs: Vec<String> =
                (0..n).map(|i| segment(&mut rng, i, i + 1 == n, is_prefix)).collect();
            let text = format!("/{}", segs.join("/"));
            let Ok(path) = PathPattern::parse(&text, is_prefix) else { continue };
            let mut rule = Rule::path(path);
            rule.priority = rng.i32(0..2);
            if rng.u8(0..4) == 0 {
                rule.methods = vec![Method::POST];
            }
            rules.push(rule);
        }
        let router = Router::new(rules.iter().cloned().enumerate().map(|(i, r)| (r, i)));
        for _ in 0..40 {
            let n = rng.usize(0..5);
            let path: Vec<&str> = (0..n).map(|_| statics[rng.usize(0..statics.len())]).collect();
            let mut q = req(&format!("/{}", path.join("/")));
            if rng.bool() {
                q.method = Method::POST;
            }
            let want = (0..rules.len())
                .filter(|&i| {
                    let mut own = matchit::Router::new();
                    for k in rules[i].path.keys() {
                        own.insert(k.text, ()).unwrap();
                    }
                    own.at(&q.path).is_ok() && rules[i].conditions_match(&q.view())
                })
                .min_by_key(|&i| rules[i].rank(i));
            let got = router.find(&q.view()).map(|f| *f.value);
            let shown: Vec<String> = rules.iter().map(|r| r.path.to_string()).collect();
            assert_eq!(got, want, "round {round}, {} {}, rules {shown:?}", q.method, q.path);
        }
    }
}
