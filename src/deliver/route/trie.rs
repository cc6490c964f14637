//! Topic patterns in a trie over words, AMQP style: `*` matches exactly one
//! word, `#` zero or more. Matching visits each (trie node, position in the
//! topic) at most once, so it stays fast with many thousands of patterns and
//! cannot be made exponential: a hostile `#.#.#.…` against a long topic costs
//! at most its nodes times the topic's words, not the ways `#`s can share them.

use std::collections::{HashMap, HashSet};

#[derive(Debug, Default, Clone)]
struct Node {
    words: HashMap<String, Node>,
    star: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    /// Values whose pattern ends here.
    values: Vec<u32>,
}

/// Patterns and the values (subscription indexes) they stand for.
#[derive(Debug, Default, Clone)]
pub struct PatternTrie {
    root: Node,
    len: usize,
}

impl PatternTrie {
    pub fn insert(&mut self, pattern: &str, value: u32) {
        let mut node = &mut self.root;
        for word in pattern.split('.') {
            node = match word {
                "*" => node.star.get_or_insert_with(Box::default),
                "#" => node.hash.get_or_insert_with(Box::default),
                w => node.words.entry(w.to_string()).or_default(),
            };
        }
        node.values.push(value);
        self.len += 1;
    }

    /// Patterns stored.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maps every value through `to`, dropping those it maps to `None`.
    pub fn renumber(&mut self, to: impl Fn(u32) -> Option<u32>) {
        fn visit(node: &mut Node, to: &dyn Fn(u32) -> Option<u32>) -> usize {
            node.values = node.values.iter().filter_map(|v| to(*v)).collect();
            let children = node
                .words
                .values_mut()
                .chain(node.star.as_deref_mut())
                .chain(node.hash.as_deref_mut());
            node.values.len() + children.map(|child| visit(child, to)).sum::<usize>()
        }
        self.len = visit(&mut self.root, &to);
    }

    /// Adds to `out` the values of every pattern that matches `topic`;
    /// answers how many (node, position) pairs it visited.
    pub fn matches(&self, topic: &str, out: &mut HashSet<u32>) -> usize {
        let words: Vec<&str> = topic.split('.').collect();
        let mut seen = HashSet::new();
        walk(&self.root, &words, out, &mut seen);
        seen.len()
    }
}

/// `seen`: (node, words left) already visited; a second visit would find
/// nothing new.
fn walk(
    node: &Node,
    words: &[&str],
    out: &mut HashSet<u32>,
    seen: &mut HashSet<(*const Node, usize)>,
) {
    if !seen.insert((node as *const Node, words.len())) {
        return;
    }
    if let Some(hash) = &node.hash {
        // `#` takes zero, one, ... or all of the remaining words.
        for skip in 0..=words.len() {
            walk(hash, &words[skip..], out, seen);
        }
    }
    let Some((first, rest)) = words.split_first() else {
        out.extend(&node.values);
        return;
    };
    if let Some(child) = node.words.get(*first) {
        walk(child, rest, out, seen);
    }
    if let Some(star) = &node.star {
        walk(star, rest, out, seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matching(patterns: &[&str], topic: &str) -> Vec<u32> {
        let mut trie = PatternTrie::default();
        for (i, p) in patterns.iter().enumerate() {
            trie.insert(p, i as u32);
        }
        let mut out = HashSet::new();
        trie.matches(topic, &mut out);
        let mut v: Vec<u32> = out.into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn words_star_and_hash_follow_amqp() {
        let p = [
            "parking.lot-7.entry",
            "parking.*.entry",
            "parking.#",
            "#",
            "parking.#.exit",
            "*.lot-7",
            "a.#.b",
        ];
        assert_eq!(matching(&p, "parking.lot-7.entry"), vec![0, 1, 2, 3]);
        assert_eq!(matching(&p, "parking.lot-7.exit"), vec![2, 3, 4]);
        assert_eq!(
            matching(&p, "parking.exit"),
            vec![2, 3, 4],
            "# matches zero words"
        );
        assert_eq!(
            matching(&p, "parking"),
            vec![2, 3],
            "parking.# matches parking itself"
        );
        assert_eq!(matching(&p, "garage.lot-7"), vec![3, 5]);
        assert_eq!(matching(&p, "a.b"), vec![3, 6]);
        assert_eq!(matching(&p, "a.x.y.b"), vec![3, 6]);
    }

    #[test]
    fn a_hostile_pattern_costs_its_nodes_times_the_words_not_an_explosion() {
        // The longest pattern the API takes: 128 `#`s (255 characters)...
        let hostile = vec!["#"; 128].join(".");
        let mut trie = PatternTrie::default();
        trie.insert(&hostile, 0);
        trie.insert("#.x.#.y.#.z", 1);
        // ... against a topic of 128 words that none of them ends on.
        let topic = vec!["w"; 128].join(".");
        let mut out = HashSet::new();
        let visited = trie.matches(&topic, &mut out);
        assert_eq!(out, HashSet::from([0]));
        // Without the memo this walk has more paths than atoms in the universe.
        let nodes = 1 + 128 + 6;
        assert!(visited <= nodes * 129, "visited {visited}");
        let mut out = HashSet::new();
        trie.matches(&format!("{topic}.x.w.y.z"), &mut out);
        assert_eq!(out, HashSet::from([0, 1]));
    }

    #[test]
    fn star_never_matches_zero_words_and_matching_is_case_sensitive() {
        assert!(matching(&["parking.*"], "parking").is_empty());
        assert!(matching(&["parking.*.entry"], "parking.entry").is_empty());
        assert!(matching(&["Parking.#"], "parking.lot").is_empty());
        assert_eq!(matching(&["parking.*"], "parking.x"), vec![0]);
    }

    /// Matching by the definition, exponential on purpose: the reference.
    fn by_definition(pattern: &[&str], topic: &[&str]) -> bool {
        match pattern.split_first() {
            None => topic.is_empty(),
            Some((&"#", rest)) => (0..=topic.len()).any(|skip| by_definition(rest, &topic[skip..])),
            Some((&"*", rest)) => !topic.is_empty() && by_definition(rest, &topic[1..]),
            Some((word, rest)) => topic.first() == Some(word) && by_definition(rest, &topic[1..]),
        }
    }

    fn words(max: usize) -> impl proptest::strategy::Strategy<Value = Vec<&'static str>> {
        proptest::collection::vec(proptest::sample::select(vec!["a", "b", "*", "#"]), 1..=max)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Adversarial pairs (patterns full of `#` and `*` against topics of
        /// the words they mention): the answer is the definition's, and the
        /// walk stays within its budget of nodes times positions.
        #[test]
        fn matching_agrees_with_the_definition_within_its_step_budget(
            patterns in proptest::collection::vec(words(12), 1..8),
            topic in proptest::collection::vec(proptest::sample::select(vec!["a", "b"]), 1..=32),
        ) {
            let mut trie = PatternTrie::default();
            let mut nodes = 1;
            for (i, pattern) in patterns.iter().enumerate() {
                trie.insert(&pattern.join("."), i as u32);
                nodes += pattern.len();
            }
            let mut out = HashSet::new();
            let visited = trie.matches(&topic.join("."), &mut out);
            proptest::prop_assert!(visited <= nodes * (topic.len() + 1), "visited {} of {} nodes", visited, nodes);
            // The reference is exponential: only where it finishes quickly.
            if topic.len() <= 12 {
                let expected: HashSet<u32> = patterns
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| by_definition(p, &topic))
                    .map(|(i, _)| i as u32)
                    .collect();
                proptest::prop_assert_eq!(out, expected);
            }
        }
    }
}
