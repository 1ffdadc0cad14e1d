//! Request routing: a pure data structure, no I/O, so it is tested without sockets.
//!
//! A route matches on its path pattern (exact with `{params}` and `{*catch-all}`, or a
//! prefix), and optionally on host, method, headers and query parameters. Of all routes
//! that match a request, the one ranked first wins ([`Rule::rank`]): highest `priority`,
//! then the most specific host, then the most specific path, then the most conditions,
//! then the earliest in the config.
//!
//! Lookup is one radix-tree walk (matchit). Patterns that the tree cannot hold side by side
//! (a catch-all and a parameter in the same place) go into further trees ("layers"), tried
//! in order. Each tree leaf carries the ranked list of every route that may match a path
//! landing on that leaf, precomputed when the router is built, so a lookup checks the
//! first candidates of one list and is done.

mod pattern;

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};

use pattern::{Key, ParamName, PathKeys};
pub use pattern::{PathPattern, PathSpecificity, Segment};

/// Everything a route matches on.
#[derive(Debug, Clone)]
pub struct Rule {
    pub path: PathPattern,
    pub priority: i32,
    /// Empty: any host.
    pub hosts: Vec<HostPattern>,
    /// Empty: any method.
    pub methods: Vec<Method>,
    pub headers: Vec<FieldMatch<HeaderName>>,
    pub query: Vec<FieldMatch<String>>,
    /// The listeners (by name) whose requests it matches. Empty: any listener's.
    pub listeners: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `api.example.com` (lower-case).
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: one or more labels before it.
    Suffix(String),
}

/// A condition on one header or query parameter.
#[derive(Debug, Clone)]
pub struct FieldMatch<N> {
    pub name: N,
    pub value: ValueMatch,
}

#[derive(Debug, Clone)]
pub enum ValueMatch {
    Present,
    Exact(String),
    Regex(regex::Regex),
}

impl PartialEq for ValueMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Present, Self::Present) => true,
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Regex(a), Self::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl<N: PartialEq> PartialEq for FieldMatch<N> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.value == other.value
    }
}

impl ValueMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::Present => true,
            ValueMatch::Exact(e) => v == e,
            ValueMatch::Regex(r) => r.is_match(v),
        }
    }
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.to_ascii_lowercase();
        let (suffix, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(format!("not a host name or `*.` wildcard (no port, no scheme): {text:?}"));
        }
        Ok(match suffix {
            true => HostPattern::Suffix(format!(".{name}")),
            false => HostPattern::Exact(name.to_owned()),
        })
    }

    /// `host` without its port.
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }

    /// Does every host `other` matches also match `self`?
    fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Suffix(_), HostPattern::Exact(h)) => self.matches(h),
            (HostPattern::Suffix(a), HostPattern::Suffix(b)) => b.ends_with(a.as_str()),
            (HostPattern::Exact(_), HostPattern::Suffix(_)) => false,
        }
    }

    fn overlaps(&self, other: &HostPattern) -> bool {
        self.covers(other) || other.covers(self)
    }
}

/// How a rule ranks against others; smaller sorts first and wins.
pub type Rank =
    (Reverse<i32>, Reverse<(u8, usize)>, Reverse<PathSpecificity>, Reverse<usize>, usize);

impl Rule {
    /// A rule that matches `path` for any host, method, header and query.
    pub fn path(path: PathPattern) -> Self {
        Rule {
            path,
            priority: 0,
            hosts: vec![],
            methods: vec![],
            headers: vec![],
            query: vec![],
            listeners: vec![],
        }
    }

    /// The documented order, with `index` (position in the config) as the last tie-break.
    pub fn rank(&self, index: usize) -> Rank {
        (
            Reverse(self.priority),
            Reverse(self.host_specificity()),
            Reverse(self.path.specificity()),
            Reverse(self.condition_count()),
            index,
        )
    }

    /// An exact host beats a wildcard, a longer wildcard beats a shorter one, and any host
    /// beats none.
    fn host_specificity(&self) -> (u8, usize) {
        self.hosts
            .iter()
            .map(|h| match h {
                HostPattern::Exact(_) => (2, 0),
                HostPattern::Suffix(s) => (1, s.len()),
            })
            .min()
            .unwrap_or((0, 0))
    }

    fn condition_count(&self) -> usize {
        usize::from(!self.methods.is_empty())
            + usize::from(!self.listeners.is_empty())
            + self.headers.len()
            + self.query.len()
    }

    /// Everything but the path.
    fn conditions_match(&self, req: &RequestView<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            return false;
        }
        if !self.listeners.is_empty() && !self.listeners.iter().any(|l| l == req.listener) {
            return false;
        }
        if !self.hosts.is_empty() {
            let Some(host) = req.host else { return false };
            if !self.hosts.iter().any(|h| h.matches(host)) {
                return false;
            }
        }
        let headers_ok = self.headers.iter().all(|c| {
            req.headers
                .get_all(&c.name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| c.value.matches(v)))
        });
        if !headers_ok {
            return false;
        }
        if self.query.is_empty() {
            return true;
        }
        let query = req.query.unwrap_or("");
        self.query.iter().all(|c| {
            form_urlencoded::parse(query.as_bytes())
                .any(|(k, v)| k == c.name && c.value.matches(&v))
        })
    }

    /// Does `self` match every request `other` matches? Conservative: `false` when unsure.
    pub fn covers(&self, other: &Rule) -> bool {
        self.conditions_cover(other) && self.path.covers(&other.path)
    }

    /// [`Self::covers`] for everything but the path.
    fn conditions_cover(&self, other: &Rule) -> bool {
        let hosts = self.hosts.is_empty()
            || (!other.hosts.is_empty()
                && other.hosts.iter().all(|o| self.hosts.iter().any(|h| h.covers(o))));
        let methods = self.methods.is_empty()
            || (!other.methods.is_empty()
                && other.methods.iter().all(|m| self.methods.contains(m)));
        let listeners = self.listeners.is_empty()
            || (!other.listeners.is_empty()
                && other.listeners.iter().all(|l| self.listeners.contains(l)));
        hosts
            && methods
            && listeners
            && self.headers.iter().all(|c| other.headers.contains(c))
            && self.query.iter().all(|c| other.query.contains(c))
    }

    /// May some request match both, as far as hosts and methods go? Conservative: `true`
    /// when unsure.
    fn conditions_overlap(&self, other: &Rule) -> bool {
        let hosts = self.hosts.is_empty()
            || other.hosts.is_empty()
            || self.hosts.iter().any(|a| other.hosts.iter().any(|b| a.overlaps(b)));
        let methods = self.methods.is_empty()
            || other.methods.is_empty()
            || self.methods.iter().any(|m| other.methods.contains(m));
        let listeners = self.listeners.is_empty()
            || other.listeners.is_empty()
            || self.listeners.iter().any(|l| other.listeners.contains(l));
        hosts && methods && listeners
    }
}

/// The parts of a request routing looks at.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// The host without port (`Host` header, or the URI's authority for HTTP/2).
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
    /// The name of the listener the request came in on.
    pub listener: &'a str,
}

impl<'a> RequestView<'a> {
    /// A request head after [`crate::proxy::normalize`] (its `Host` header is the host),
    /// come in on `listener`.
    pub fn of_parts(parts: &'a http::request::Parts, listener: &'a str) -> Self {
        let host = parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok());
        RequestView {
            method: &parts.method,
            path: parts.uri.path(),
            host: host.map(strip_port),
            headers: &parts.headers,
            query: parts.uri.query(),
            listener,
        }
    }
}

/// `example.com:8080` -> `example.com`, `[::1]:80` -> `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Route parameters, by name, percent-decoded.
pub type Params = Vec<(Arc<str>, String)>;

/// The route a request matched, with its parameters.
pub struct Found<'a, T> {
    pub value: &'a T,
    pub params: Params,
}

struct Entry<T> {
    rule: Rule,
    keys: Vec<Key>,
    params: Vec<(Arc<str>, String)>,
    /// The rule's own patterns, for when it is reached as a fallback from another leaf.
    own: matchit::Router<()>,
    value: T,
}

struct Leaf {
    /// Route indices, best first; `true` when the route was inserted under this leaf's key
    /// (its path is then already matched).
    candidates: Vec<(usize, bool)>,
}

pub struct Router<T> {
    layers: Vec<matchit::Router<usize>>,
    leaves: Vec<Leaf>,
    entries: Vec<Entry<T>>,
}

impl<T> Router<T> {
    /// Builds the router. Routes are given in config order.
    pub fn new(routes: impl IntoIterator<Item = (Rule, T)>) -> Self {
        let mut entries: Vec<Entry<T>> = Vec::new();
        for (rule, value) in routes {
            let keys = rule.path.keys();
            let mut own = matchit::Router::new();
            for k in &keys {
                own.insert(k.text.clone(), ()).expect("a rule's own keys never conflict");
            }
            let params = rule
                .path
                .params()
                .into_iter()
                .map(|ParamName { name, key }| (Arc::from(name), key))
                .collect();
            entries.push(Entry { keys, rule, params, own, value });
        }
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by_key(|&i| entries[i].rule.rank(i));

        // Distinct keys, each in the first layer that takes it.
        let mut layers: Vec<matchit::Router<usize>> = Vec::new();
        let mut keys: Vec<(Key, usize)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for e in &entries {
            for k in &e.keys {
                if index.contains_key(&k.text) {
                    continue;
                }
                let leaf = keys.len();
                let layer = (0..)
                    .find(|&l| {
                        if l == layers.len() {
                            layers.push(matchit::Router::new());
                        }
                        layers[l].insert(k.text.clone(), leaf).is_ok()
                    })
                    .expect("an empty tree takes any key");
                index.insert(k.text.clone(), leaf);
                keys.push((k.clone(), layer));
            }
        }
        // Routes by the first literal segment of their keys: a leaf under `/a/...` can only
        // be reached by routes with a key under `/a` or one that starts with a parameter,
        // so each leaf looks at those, not at every route (10,000 routes load in ms).
        let position: Vec<usize> = {
            let mut p = vec![0; entries.len()];
            for (rank, &i) in order.iter().enumerate() {
                p[i] = rank;
            }
            p
        };
        let mut by_first: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut wild: Vec<usize> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let mut firsts: Vec<&str> = Vec::new();
            for k in &e.keys {
                match k.first_literal() {
                    Some(f) if !firsts.contains(&f) => firsts.push(f),
                    Some(_) => {}
                    None if wild.last() != Some(&i) => wild.push(i),
                    None => {}
                }
            }
            for f in firsts {
                by_first.entry(f).or_default().push(i);
            }
        }
        let all: Vec<usize> = (0..entries.len()).collect();
        let leaves = keys
            .iter()
            .map(|(leaf_key, layer)| {
                let mut pool: Vec<usize> = match leaf_key.first_literal() {
                    Some(f) => {
                        let mut p = by_first.get(f).cloned().unwrap_or_default();
                        p.extend(&wild);
                        p
                    }
                    None => all.clone(),
                };
                pool.sort_unstable_by_key(|&i| position[i]);
                pool.dedup();
                // A route may match a path that lands here unless each of its keys cannot:
                // it is disjoint, or sits in an earlier layer (tried first, so it did not
                // match), or sits in this layer and the tree prefers it over this leaf.
                let reachable = |k: &Key| {
                    let (_, l) = keys[index[&k.text]];
                    k.overlaps(leaf_key) && l >= *layer && !(l == *layer && k.beats(leaf_key))
                };
                let candidates = pool
                    .into_iter()
                    .filter_map(|i| {
                        let same = entries[i].keys.contains(leaf_key);
                        (same || entries[i].keys.iter().any(reachable)).then_some((i, same))
                    })
                    .collect();
                Leaf { candidates }
            })
            .collect();
        Router { layers, leaves, entries }
    }

    /// The best route for the request, if any.
    pub fn find(&self, req: &RequestView<'_>) -> Option<Found<'_, T>> {
        for layer in &self.layers {
            let Ok(m) = layer.at(req.path) else { continue };
            for &(i, same_key) in &self.leaves[*m.value].candidates {
                let e = &self.entries[i];
                if !e.rule.conditions_match(req) {
                    continue;
                }
                let params = if same_key {
                    e.params_from(&m.params)
                } else {
                    match e.own.at(req.path) {
                        Ok(own) => e.params_from(&own.params),
                        Err(_) => continue,
                    }
                };
                return Some(Found { value: &e.value, params });
            }
            return None;
        }
        None
    }
}

impl<T> Entry<T> {
    fn params_from(&self, found: &matchit::Params<'_, '_>) -> Params {
        self.params
            .iter()
            .filter_map(|(name, key)| {
                let raw = found.get(key)?;
                let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
                Some((name.clone(), decoded.into_owned()))
            })
            .collect()
    }
}

/// A problem with a route table that `sluice check` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Route `shadowed` can never match: `by` ranks first and matches all it would.
    Unreachable { shadowed: usize, by: usize },
    /// Both may match one request with the same rank up to config order, which decides.
    Ambiguous { first: usize, second: usize },
}

/// Finds unreachable and ambiguous routes among `rules` (in config order).
///
/// Each route is compared with the routes ranked before it that it may meet: those with
/// the same first literal segment, and those that start with a parameter (or are the root).
/// What a comparison needs is computed once per rule.
pub fn analyze(rules: &[Rule]) -> Vec<Finding> {
    let keys: Vec<PathKeys> = rules.iter().map(|r| PathKeys::of(&r.path)).collect();
    // Rank without the config-order tie-break: equal ones tie.
    let tier: Vec<Rank> = rules.iter().map(|r| r.rank(0)).collect();
    let mut order: Vec<usize> = (0..rules.len()).collect();
    order.sort_by_key(|&i| (&tier[i], i));
    let covers =
        |s: usize, r: usize| keys[s].covers(&keys[r]) && rules[s].conditions_cover(&rules[r]);
    let tie = |s: usize, r: usize| {
        tier[s] == tier[r] && keys[s].overlaps(&keys[r]) && rules[s].conditions_overlap(&rules[r])
    };
    // Earlier routes (in rank order) by first literal, and those without one.
    let mut by_first: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut wild: Vec<usize> = Vec::new();
    let mut findings = Vec::new();
    for (pos, &r) in order.iter().enumerate() {
        // The first earlier route (by rank) that passes `test`.
        let first_earlier = |test: &dyn Fn(usize) -> bool| match keys[r].first_literal() {
            None => order[..pos].iter().copied().find(|&s| test(s)),
            Some(f) => {
                let same = by_first.get(f).and_then(|v| v.iter().copied().find(|&s| test(s)));
                let any = wild.iter().copied().find(|&s| test(s));
                let rank = |s: usize| (&tier[s], s);
                match (same, any) {
                    (Some(a), Some(b)) => Some(if rank(a) <= rank(b) { a } else { b }),
                    (a, b) => a.or(b),
                }
            }
        };
        if let Some(by) = first_earlier(&|s| covers(s, r)) {
            findings.push(Finding::Unreachable { shadowed: r, by });
        } else if let Some(first) = first_earlier(&|s| tie(s, r)) {
            findings.push(Finding::Ambiguous { first, second: r });
        }
        match keys[r].first_literal() {
            Some(f) => by_first.entry(f).or_default().push(r),
            None => wild.push(r),
        }
    }
    findings
}

#[cfg(test)]
mod tests;
