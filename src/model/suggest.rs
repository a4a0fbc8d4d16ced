//! "Did you mean": the one place that picks the known name closest to a misspelt one.

/// Jaro-Winkler similarity (0 to 1) a known name needs to be suggested; below it, no suggestion.
pub const THRESHOLD: f64 = 0.8;

/// Words longer than this (in bytes) get no suggestion: similarity costs length × length, a DAG
/// file or an argument can hand in megabytes, and such a word is no typo. Airflow's ids are at
/// most 250 characters.
pub const MAX_WORD_BYTES: usize = 256;

/// The name in `known` closest to `word`, if one scores at least [`THRESHOLD`].
///
/// Never suggests `word` itself (a name that is known needs no suggestion). On a tie the earlier
/// name in `known` wins, so the answer does not depend on anything but the inputs.
pub fn nearest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    if word.len() > MAX_WORD_BYTES {
        return None;
    }
    let mut best: Option<(f64, &'a str)> = None;
    for &k in known {
        if k == word || k.len() > MAX_WORD_BYTES {
            continue;
        }
        let score = strsim::jaro_winkler(word, k);
        if score >= THRESHOLD && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, k));
        }
    }
    best.map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_name_above_the_threshold() {
        assert_eq!(nearest("dags_foldr", &["parallelism", "dags_folder"]), Some("dags_folder"));
        assert_eq!(nearest("paralelism", &["parallelism", "dags_folder"]), Some("parallelism"));
    }

    #[test]
    fn nothing_below_the_threshold_or_for_the_name_itself() {
        assert_eq!(nearest("zzz", &["parallelism", "dags_folder"]), None);
        assert_eq!(nearest("good", &["good"]), None);
        assert_eq!(nearest("good", &["good", "goods"]), Some("goods"));
        assert_eq!(nearest("", &[]), None);
        assert_eq!(nearest("x", &[""]), None);
    }

    #[test]
    fn long_words_get_no_suggestion() {
        let long = "a".repeat(MAX_WORD_BYTES + 1);
        assert_eq!(nearest(&long, &["aaa"]), None);
        assert_eq!(nearest("aaa", &[long.as_str()]), None);
        let edge = "a".repeat(MAX_WORD_BYTES);
        assert_eq!(nearest(&edge[1..], &[edge.as_str()]), Some(edge.as_str()));
    }

    #[test]
    fn ties_go_to_the_first_name() {
        assert_eq!(nearest("ab", &["abc", "abd"]), Some("abc"));
        assert_eq!(nearest("ab", &["abd", "abc"]), Some("abd"));
    }
}
