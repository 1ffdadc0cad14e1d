//! Request routing: a pure data structure, no I/O, so it is tested without sockets.
//!
//! Routes match a path prefix on segment boundaries (`/api/users` matches `/api/users`,
//! `/api/users/` and `/api/users/7`, not `/api/usersx`); the longest matching prefix wins.
//! This is the seam for the full router (params, hosts, methods, priorities).

/// A route table mapping path prefixes to `T`.
#[derive(Debug, Clone)]
pub struct Router<T> {
    /// Sorted longest prefix first, so the first match is the most specific.
    routes: Vec<(String, T)>,
}

impl<T> Router<T> {
    /// Builds a router; a trailing `/` on a prefix is ignored.
    pub fn new(routes: impl IntoIterator<Item = (String, T)>) -> Self {
        let mut routes: Vec<(String, T)> =
            routes.into_iter().map(|(p, t)| (p.trim_end_matches('/').to_owned(), t)).collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Self { routes }
    }

    /// The most specific route for `path`, if any.
    pub fn find(&self, path: &str) -> Option<&T> {
        self.routes.iter().find(|(prefix, _)| prefix_matches(prefix, path)).map(|(_, t)| t)
    }
}

/// `prefix` has no trailing slash; the empty prefix is the root route and matches all.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<&'static str> {
        Router::new([
            ("/".to_owned(), "root"),
            ("/api/users".to_owned(), "users"),
            ("/api/users/admin/".to_owned(), "admin"),
            ("/api".to_owned(), "api"),
        ])
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let r = router();
        assert_eq!(r.find("/api/users"), Some(&"users"));
        assert_eq!(r.find("/api/users/"), Some(&"users"));
        assert_eq!(r.find("/api/users/7"), Some(&"users"));
        assert_eq!(r.find("/api/users/admin"), Some(&"admin"));
        assert_eq!(r.find("/api/users/admin/x"), Some(&"admin"));
        assert_eq!(r.find("/api/usersx"), Some(&"api"));
        assert_eq!(r.find("/apix"), Some(&"root"));
        assert_eq!(r.find("/"), Some(&"root"));
    }

    #[test]
    fn no_root_route_means_no_match() {
        let r = Router::new([("/api".to_owned(), 1)]);
        assert_eq!(r.find("/api/x"), Some(&1));
        assert_eq!(r.find("/other"), None);
        assert_eq!(r.find("/ap"), None);
    }
}
