//! Row 2 of the decision table: the requests the engine leaves alone
//! (CORS preflights, skipped methods, path globs, the skip predicate).

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::config::ConfigError;
use crate::decision::Reason;
use crate::engine::Sticky;
use crate::seen::PathOnce;
use crate::view::RequestView;

impl Sticky {
    /// Row 2: requests the engine leaves alone.
    pub(crate) fn filtered<V: RequestView>(
        &self,
        req: &V,
        path: &PathOnce<'_, V>,
    ) -> Option<Reason> {
        let inner = &*self.inner;
        let method = req.method();
        if inner.skip_preflight
            && method == "OPTIONS"
            && req.has_header("access-control-request-method")
        {
            return Some(Reason::Preflight);
        }
        if inner.skip_methods.iter().any(|m| m == method) {
            return Some(Reason::MethodSkipped);
        }
        if let Some(include) = &inner.include
            && !include.matches(path.get())
        {
            return Some(Reason::PathNotIncluded);
        }
        if let Some(exclude) = &inner.exclude
            && exclude.matches(path.get())
        {
            return Some(Reason::PathExcluded);
        }
        if inner
            .skip_if
            .as_ref()
            .is_some_and(|skip| skip(req as &dyn RequestView))
        {
            return Some(Reason::Skipped);
        }
        None
    }
}

/// Path patterns. Plain paths (the usual `/health`) are compared as
/// strings: a glob without metacharacters matches exactly itself, and the
/// comparison skips globset's hashing of every request path.
pub(crate) struct PathSet {
    literals: Vec<Box<str>>,
    /// Bit `n` (`n` < 63): some literal is `n` bytes long; bit 63: one is
    /// longer. Most paths then rule every literal out in one test.
    lengths: u64,
    globs: Option<GlobSet>,
}

impl PathSet {
    #[inline]
    pub(crate) fn matches(&self, path: &str) -> bool {
        (self.lengths & length_bit(path.len()) != 0 && self.literals.iter().any(|l| **l == *path))
            || self.globs.as_ref().is_some_and(|g| g.is_match(path))
    }
}

#[inline]
fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

pub(crate) fn glob_set(
    setting: &'static str,
    patterns: &[String],
) -> Result<Option<PathSet>, ConfigError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut literals: Vec<Box<str>> = Vec::new();
    let mut globs = GlobSetBuilder::new();
    let mut glob_patterns = Vec::new();
    for pattern in patterns {
        // Compiled even when plain, so that every pattern is validated alike.
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|source| ConfigError::InvalidGlob {
                setting,
                pattern: pattern.clone(),
                source,
            })?;
        if pattern.bytes().any(|b| b"*?[]{}\\".contains(&b)) {
            globs.add(glob);
            glob_patterns.push(pattern.as_str());
        } else {
            literals.push(pattern.as_str().into());
        }
    }
    let globs = if glob_patterns.is_empty() {
        None
    } else {
        Some(globs.build().map_err(|source| ConfigError::InvalidGlob {
            setting,
            pattern: glob_patterns.join(", "),
            source,
        })?)
    };
    let lengths = literals
        .iter()
        .fold(0, |bits, l| bits | length_bit(l.len()));
    Ok(Some(PathSet {
        literals,
        lengths,
        globs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(patterns: &[String]) -> GlobSet {
        let mut set = GlobSetBuilder::new();
        for p in patterns {
            set.add(GlobBuilder::new(p).literal_separator(true).build().unwrap());
        }
        set.build().unwrap()
    }

    #[test]
    fn plain_paths_match_exactly() {
        let set = glob_set("exclude", &["/health".into(), "/static/**".into()])
            .unwrap()
            .unwrap();
        assert_eq!(set.literals.len(), 1);
        assert!(set.globs.is_some());
        for (path, hit) in [
            ("/health", true),
            ("/health/", false),
            ("/healthz", false),
            ("/Health", false),
            ("/static/a/b.css", true),
            ("/", false),
        ] {
            assert_eq!(set.matches(path), hit, "{path}");
        }
        // Literals past the length bitmap's 63 bits share its last bit.
        let long = format!("/{}", "a".repeat(70));
        let set = glob_set("exclude", &[long.clone(), "/a".into()])
            .unwrap()
            .unwrap();
        assert!(set.matches(&long));
        assert!(set.matches("/a"));
        assert!(!set.matches(&format!("/{}", "a".repeat(64))));
        assert!(!set.matches(&format!("/{}b", "a".repeat(69))));
        assert!(!set.matches("/b"));
    }

    proptest! {
        /// Splitting plain paths off changes no answer.
        #[test]
        fn path_sets_agree_with_globset(
            patterns in prop::collection::vec("(/[a-c*?]{0,3}){1,3}|/[a-c]{1,2}/\\*\\*|/[a-c]{0,2}", 1..5),
            path in "(/[a-c.*?]{0,3}){0,4}",
        ) {
            let ours = glob_set("include", &patterns).unwrap().unwrap();
            prop_assert_eq!(ours.matches(&path), reference(&patterns).is_match(&path));
        }
    }
}
