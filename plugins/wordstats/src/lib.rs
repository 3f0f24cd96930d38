//! Word and byte statistics over a text.
//!
//! Input `{"text": "...", "top": 10}` (`top` optional, default 10) → output
//! `{"bytes", "chars", "lines", "words", "unique_words", "top_words": [{"word", "count"}]}`.
//! Words are maximal runs of alphanumeric characters, compared case-insensitively.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use taskflow_sdk::{TaskError, task};

#[derive(Deserialize)]
struct Request {
    text: String,
    #[serde(default = "default_top")]
    top: usize,
}

fn default_top() -> usize {
    10
}

#[derive(Debug, PartialEq, Serialize)]
struct Stats {
    bytes: usize,
    chars: usize,
    lines: usize,
    words: usize,
    unique_words: usize,
    top_words: Vec<WordCount>,
}

#[derive(Debug, PartialEq, Serialize)]
struct WordCount {
    word: String,
    count: usize,
}

#[task]
fn wordstats(request: Request) -> Result<Stats, TaskError> {
    if request.top > 1000 {
        return Err(TaskError::fatal("top must be at most 1000"));
    }
    let stats = statistics(&request.text, request.top);
    taskflow_sdk::log::info!("{} words, {} distinct", stats.words, stats.unique_words);
    Ok(stats)
}

fn statistics(text: &str, top: usize) -> Stats {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut words = 0;
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        words += 1;
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    let unique_words = counts.len();
    let mut ranked: Vec<WordCount> = counts
        .into_iter()
        .map(|(word, count)| WordCount { word, count })
        .collect();
    ranked.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    ranked.truncate(top);
    Stats {
        bytes: text.len(),
        chars: text.chars().count(),
        lines: text.lines().count(),
        words,
        unique_words,
        top_words: ranked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_case_insensitively_and_ranks_them() {
        let stats = statistics("The cat. the DOG, the cat!\nÉté été", 2);
        assert_eq!(stats.words, 8);
        assert_eq!(stats.unique_words, 4);
        assert_eq!(stats.lines, 2);
        assert_eq!(stats.chars, 34);
        assert_eq!(stats.bytes, 38, "four two-byte accented letters");
        assert_eq!(
            stats.top_words,
            [
                WordCount {
                    word: "the".into(),
                    count: 3
                },
                WordCount {
                    word: "cat".into(),
                    count: 2
                }
            ]
        );
    }

    #[test]
    fn empty_text_has_no_words() {
        let stats = statistics("", 10);
        assert_eq!((stats.words, stats.lines, stats.top_words.len()), (0, 0, 0));
    }
}
