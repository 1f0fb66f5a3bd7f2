//! Tag routing: Fluent Bit's `Match` (with `*` wildcards) and `Match_Regex`.

use regex::Regex;

/// Which tags a filter or output takes.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// `Match` pattern; `*` matches any run of characters, dots included.
    Glob(String),
    Regex(Regex),
}

// === impl Matcher ===

impl Matcher {
    pub fn matches(&self, tag: &str) -> bool {
        match self {
            Matcher::Glob(p) => glob(p.as_bytes(), tag.as_bytes()),
            Matcher::Regex(r) => r.is_match(tag),
        }
    }
}

/// Iterative wildcard match with single-star backtracking (linear for practical patterns).
fn glob(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fluent_bit_match_semantics() {
        let m = |p: &str, t: &str| Matcher::Glob(p.into()).matches(t);
        assert!(m("*", "anything.at.all"));
        assert!(m("app.*", "app.web"));
        assert!(m("app.*", "app.web.stderr"));
        assert!(!m("app.*", "app"));
        assert!(!m("app.*", "other.web"));
        assert!(m("*-firelens-*", "orders-firelens-abc123"));
        assert!(m("app.web", "app.web"));
        assert!(!m("app.web", "app.webx"));
        assert!(m("a*c*e", "abcde"));
        assert!(!m("a*c*e", "abcd"));
        let r = Matcher::Regex(Regex::new("^app\\.(web|api)$").unwrap());
        assert!(r.matches("app.api") && !r.matches("app.db"));
    }
}
