//! "Did you mean ...?" for unknown manifest fields: nearest known name by edit distance.

/// Levenshtein distance between `a` and `b`, counted in chars.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The known name closest to `unknown` (case-insensitive), if it is close enough to be
/// a plausible typo: at most max(2, len/3) edits, and not a complete rewrite.
pub(crate) fn nearest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = unknown.to_lowercase();
    let len = lower.chars().count();
    let limit = (len / 3).max(2);
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_lowercase()), *k))
        .filter(|(d, k)| *d <= limit && *d < len.max(k.chars().count()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("storagUri", "storageUri"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("flaw", "lawn"), 2);
    }

    #[test]
    fn nearest_suggests_storage_uri_for_storag_uri() {
        let known = ["storageUri", "schemaUri", "secretName", "server"];
        assert_eq!(nearest("storagUri", &known), Some("storageUri"));
    }

    #[test]
    fn nearest_ignores_case_and_picks_the_closest() {
        let known = ["replicas", "minReplicas", "maxReplicas"];
        assert_eq!(nearest("minreplicas", &known), Some("minReplicas"));
        assert_eq!(nearest("replica", &known), Some("replicas"));
    }

    #[test]
    fn nearest_suggests_nothing_for_an_unrelated_name() {
        let known = ["storageUri", "requirements", "memory"];
        assert_eq!(nearest("colour", &known), None);
        assert_eq!(nearest("x", &["y"]), None);
    }
}
