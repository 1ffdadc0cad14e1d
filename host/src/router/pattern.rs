//! Path patterns: how operators write them, the radix-tree keys they become, and how two
//! patterns relate (may they match the same path? does one match every path the other does?).
//!
//! A pattern is a list of whole segments: static text, a named parameter `{id}` (one
//! non-empty segment) or a catch-all `{*rest}` (the rest of the path, at least one
//! character; last segment only). A *prefix* pattern also matches every path below it, on
//! segment boundaries: prefix `/api` matches `/api`, `/api/` and `/api/users/7`, not `/apix`.

use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Static(String),
    Param(String),
    CatchAll(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPattern {
    pub segments: Vec<Segment>,
    /// Matches the pattern and every path below it.
    pub prefix: bool,
}

/// A parameter's name as written, and the name it has in the shared radix tree (tree keys
/// use positional names so that `/u/{id}` and `/u/{name}` can share a node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamName {
    pub name: String,
    pub key: String,
}

/// How specific a path pattern is; larger is more specific. Compared field by field:
/// the longer literal prefix wins, then more literal segments, then an exact pattern over a
/// prefix or catch-all, then fewer parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PathSpecificity {
    leading_static: usize,
    statics: usize,
    exact: bool,
    fewer_params: std::cmp::Reverse<usize>,
}

impl PathPattern {
    /// Parses `/users/{id}` (exact) or, with `prefix`, `/api` (a trailing `/` is ignored).
    pub fn parse(text: &str, prefix: bool) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("must start with '/': {text:?}"));
        };
        if let Some(c) = text.chars().find(|c| matches!(c, '?' | '#') || c.is_whitespace()) {
            return Err(format!("{c:?} is not allowed in a path pattern: {text:?}"));
        }
        let rest = if prefix { rest.trim_end_matches('/') } else { rest };
        let mut segments = Vec::new();
        if !(prefix && rest.is_empty()) {
            for s in rest.split('/') {
                segments.push(parse_segment(s, text)?);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in segments.iter().enumerate() {
            match s {
                Segment::CatchAll(_) if prefix => {
                    return Err(format!(
                        "a prefix already matches everything below it; drop the catch-all \
                         or use `path`: {text:?}"
                    ));
                }
                Segment::CatchAll(_) if i + 1 != segments.len() => {
                    return Err(format!("a catch-all must be the last segment: {text:?}"));
                }
                Segment::Param(n) | Segment::CatchAll(n) if !seen.insert(n.clone()) => {
                    return Err(format!("parameter {{{n}}} appears twice in {text:?}"));
                }
                _ => {}
            }
        }
        Ok(Self { segments, prefix })
    }

    /// The parameters, in order, with their tree names.
    pub fn params(&self) -> Vec<ParamName> {
        let mut i = 0;
        let mut out = Vec::new();
        for s in &self.segments {
            match s {
                Segment::Param(n) => {
                    out.push(ParamName { name: n.clone(), key: format!("p{i}") });
                    i += 1;
                }
                Segment::CatchAll(n) => out.push(ParamName { name: n.clone(), key: "rest".into() }),
                Segment::Static(_) => {}
            }
        }
        out
    }

    /// The radix-tree keys this pattern is inserted under: one for an exact pattern; for a
    /// prefix, the prefix itself, with a trailing slash, and with a catch-all below it.
    pub fn keys(&self) -> Vec<Key> {
        let base = Key::from_segments(&self.segments);
        if !self.prefix {
            return vec![base];
        }
        let below = |last: Segment| {
            let mut s = self.segments.clone();
            s.push(last);
            Key::from_segments(&s)
        };
        if self.segments.is_empty() {
            // The root prefix: `/` and `/{*rest}`.
            return vec![below(Segment::Static(String::new())), below(catch_all())];
        }
        vec![base, below(Segment::Static(String::new())), below(catch_all())]
    }

    pub fn specificity(&self) -> PathSpecificity {
        let is_static = |s: &&Segment| matches!(s, Segment::Static(_));
        let catch_all = self.segments.iter().any(|s| matches!(s, Segment::CatchAll(_)));
        PathSpecificity {
            leading_static: self.segments.iter().take_while(is_static).count(),
            statics: self.segments.iter().filter(is_static).count(),
            exact: !self.prefix && !catch_all,
            fewer_params: std::cmp::Reverse(self.segments.len() - self.statics()),
        }
    }

    fn statics(&self) -> usize {
        self.segments.iter().filter(|s| matches!(s, Segment::Static(_))).count()
    }

    /// The literal text before the first parameter, for prefix rewriting; `None` if the
    /// prefix has parameters.
    pub fn literal_prefix(&self) -> Option<String> {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Static(t) => write!(out, "/{t}").expect("writing to a String"),
                _ => return None,
            }
        }
        Some(out)
    }

    /// May some path match both patterns? Conservative: `true` when unsure.
    pub fn overlaps(&self, other: &PathPattern) -> bool {
        PathKeys::of(self).overlaps(&PathKeys::of(other))
    }

    /// Does `self` match every path `other` matches? Conservative: `false` when unsure.
    pub fn covers(&self, other: &PathPattern) -> bool {
        PathKeys::of(self).covers(&PathKeys::of(other))
    }
}

/// A pattern's keys, computed once for comparing it with many others (checking a route
/// table compares every pair).
pub struct PathKeys {
    keys: Vec<Key>,
    /// The first segment, when it is the same literal in every key: two patterns with
    /// different ones can neither overlap nor cover each other.
    first_literal: Option<String>,
}

impl PathKeys {
    pub fn of(pattern: &PathPattern) -> Self {
        let keys = pattern.keys();
        let first = |k: &Key| match k.segments.first() {
            Some(Segment::Static(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let first_literal = keys
            .first()
            .and_then(first)
            .filter(|f| keys.iter().all(|k| first(k).as_ref() == Some(f)));
        Self { keys, first_literal }
    }

    /// The first segment, when it is the same literal in every key.
    pub fn first_literal(&self) -> Option<&str> {
        self.first_literal.as_deref()
    }

    /// A cheap test that rules most pairs out: `false` only if no path can match both.
    pub fn may_meet(&self, other: &PathKeys) -> bool {
        match (&self.first_literal, &other.first_literal) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }

    pub fn overlaps(&self, other: &PathKeys) -> bool {
        self.may_meet(other)
            && self
                .keys
                .iter()
                .any(|x| other.keys.iter().any(|y| overlaps(&x.segments, &y.segments)))
    }

    pub fn covers(&self, other: &PathKeys) -> bool {
        self.may_meet(other)
            && other.keys.iter().all(|y| self.keys.iter().any(|x| covers(&x.segments, &y.segments)))
    }
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.segments.is_empty() {
            f.write_str("/")?;
        }
        for s in &self.segments {
            match s {
                Segment::Static(t) => write!(f, "/{t}")?,
                Segment::Param(n) => write!(f, "/{{{n}}}")?,
                Segment::CatchAll(n) => write!(f, "/{{*{n}}}")?,
            }
        }
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

fn catch_all() -> Segment {
    Segment::CatchAll("rest".into())
}

fn parse_segment(s: &str, whole: &str) -> Result<Segment, String> {
    let named = |n: &str| {
        let ok =
            !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        match ok {
            true => Ok(n.to_owned()),
            false => {
                Err(format!("bad parameter name {n:?} in {whole:?} (letters, digits, _ and -)"))
            }
        }
    };
    match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        Some(inner) => match inner.strip_prefix('*') {
            Some(n) => Ok(Segment::CatchAll(named(n)?)),
            None => Ok(Segment::Param(named(inner)?)),
        },
        None if s.contains(['{', '}']) => {
            Err(format!("a parameter must be a whole segment, like /{{id}}/: {whole:?}"))
        }
        None => Ok(Segment::Static(s.to_owned())),
    }
}

/// A radix-tree key: the segments, with parameters under positional names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub text: String,
    segments: Vec<Segment>,
}

impl Key {
    fn from_segments(segments: &[Segment]) -> Self {
        let mut text = String::new();
        let mut i = 0;
        let mut normalized = Vec::with_capacity(segments.len());
        for s in segments {
            text.push('/');
            let n = match s {
                Segment::Static(t) => {
                    text.push_str(t);
                    Segment::Static(t.clone())
                }
                Segment::Param(_) => {
                    write!(text, "{{p{i}}}").expect("writing to a String");
                    i += 1;
                    Segment::Param(format!("p{}", i - 1))
                }
                Segment::CatchAll(_) => {
                    text.push_str("{*rest}");
                    catch_all()
                }
            };
            normalized.push(n);
        }
        if text.is_empty() {
            text.push('/');
        }
        Self { text, segments: normalized }
    }
}

impl Key {
    /// The first segment, if it is a non-empty literal: a key with another first literal
    /// can never match the same path.
    pub fn first_literal(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Static(s)) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    pub fn overlaps(&self, other: &Key) -> bool {
        overlaps(&self.segments, &other.segments)
    }

    /// Whether the radix tree, holding both keys, always prefers `self` on a path both
    /// match: at the first segment where they differ, `self` has the stronger kind
    /// (static, then parameter, then catch-all). Then no path routed to `other` can match
    /// `self`.
    pub fn beats(&self, other: &Key) -> bool {
        fn strength(s: &Segment) -> u8 {
            match s {
                Segment::Static(_) => 2,
                Segment::Param(_) => 1,
                Segment::CatchAll(_) => 0,
            }
        }
        for (a, b) in self.segments.iter().zip(&other.segments) {
            if a != b {
                return strength(a) > strength(b);
            }
        }
        false
    }
}

fn overlaps(a: &[Segment], b: &[Segment]) -> bool {
    use Segment::*;
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        (Some((CatchAll(_), _)), Some(_)) | (Some(_), Some((CatchAll(_), _))) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some((Static(x), ra)), Some((Static(y), rb))) => x == y && overlaps(ra, rb),
        (Some((Param(_), ra)), Some((Static(y), rb)))
        | (Some((Static(y), ra)), Some((Param(_), rb))) => !y.is_empty() && overlaps(ra, rb),
        (Some((Param(_), ra)), Some((Param(_), rb))) => overlaps(ra, rb),
    }
}

fn covers(a: &[Segment], b: &[Segment]) -> bool {
    use Segment::*;
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        // A catch-all needs at least one character: `/api/{*rest}` does not match `/api/`.
        (Some((CatchAll(_), _)), Some(_)) => b != [Static(String::new())],
        (Some((Static(x), ra)), Some((Static(y), rb))) => x == y && covers(ra, rb),
        (Some((Param(_), ra)), Some((Static(y), rb))) => !y.is_empty() && covers(ra, rb),
        (Some((Param(_), ra)), Some((Param(_), rb))) => covers(ra, rb),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(t: &str) -> PathPattern {
        PathPattern::parse(t, false).unwrap()
    }
    fn prefix(t: &str) -> PathPattern {
        PathPattern::parse(t, true).unwrap()
    }
    fn keys(p: &PathPattern) -> Vec<String> {
        p.keys().into_iter().map(|k| k.text).collect()
    }

    #[test]
    fn keys_use_positional_parameter_names() {
        assert_eq!(keys(&exact("/users/{id}/posts/{post}")), ["/users/{p0}/posts/{p1}"]);
        assert_eq!(keys(&exact("/files/{*path}")), ["/files/{*rest}"]);
        assert_eq!(keys(&exact("/")), ["/"]);
        assert_eq!(keys(&prefix("/")), ["/", "/{*rest}"]);
        assert_eq!(keys(&prefix("/api/")), ["/api", "/api/", "/api/{*rest}"]);
        assert_eq!(keys(&prefix("/t/{tenant}")), ["/t/{p0}", "/t/{p0}/", "/t/{p0}/{*rest}"]);
    }

    #[test]
    fn bad_patterns_are_explained() {
        let err = |t: &str, p: bool| PathPattern::parse(t, p).unwrap_err();
        assert!(err("api", false).contains("must start with '/'"));
        assert!(err("/img-{id}.png", false).contains("whole segment"));
        assert!(err("/{*a}/b", false).contains("last segment"));
        assert!(err("/api/{*rest}", true).contains("prefix already matches"));
        assert!(err("/{id}/{id}", false).contains("appears twice"));
        assert!(err("/a?b=1", false).contains("not allowed"));
        assert!(err("/{}", false).contains("bad parameter name"));
    }

    #[test]
    fn overlap_and_cover() {
        assert!(prefix("/").covers(&exact("/users/{id}")));
        assert!(prefix("/api").covers(&prefix("/api/v1")));
        assert!(!prefix("/api/v1").covers(&prefix("/api")));
        assert!(prefix("/api").overlaps(&prefix("/api/v1")));
        assert!(exact("/users/{id}").covers(&exact("/users/admin")));
        assert!(!exact("/users/admin").covers(&exact("/users/{id}")));
        assert!(exact("/users/admin").overlaps(&exact("/users/{id}")));
        assert!(!exact("/users/{id}").overlaps(&exact("/orders/{id}")));
        assert!(!exact("/a").overlaps(&exact("/a/b")));
        // `/api/{*rest}` needs at least one character after `/api/`.
        assert!(!exact("/api/{*rest}").covers(&prefix("/api")));
        assert!(exact("/api/{*rest}").covers(&exact("/api/x/y")));
        assert!(prefix("/t/{tenant}").covers(&exact("/t/acme/users")));
    }

    #[test]
    fn specificity_orders_literal_prefix_first() {
        let s = |p: PathPattern| p.specificity();
        assert!(s(exact("/users/admin")) > s(exact("/users/{id}")));
        assert!(s(exact("/users/{id}")) > s(prefix("/users")));
        assert!(s(prefix("/api/v1")) > s(prefix("/api")));
        assert!(s(prefix("/api")) > s(prefix("/")));
        assert!(s(exact("/a/{x}/c")) > s(exact("/a/{x}/{y}")));
    }
}
