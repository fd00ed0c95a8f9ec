//! `wordcount`: words counted in a table, and a contract other tools use to
//! drive Strom from outside.
//!
//! Consumes `words.in` (4 partitions; values are UTF-8 text lines, any key),
//! lowercases each line, splits it on whitespace, re-keys each word through
//! `group_by` (the repartition topic `words.by-word`), counts it in the table
//! `counts`, and on every update emits `{"word": w, "count": n}` to `words.out`
//! keyed by the word. A value that is not UTF-8 goes to `words.in.dlq`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use stream_core::prelude::*;

/// A word's count after an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordCount {
    /// The word (lowercase).
    pub word: String,
    /// How often it was seen so far.
    pub count: u64,
}

impl Payload for WordCount {
    type Codec = stream_core::codec::Json;
}

/// The topics and table of the word count.
#[derive(Debug, Clone)]
pub struct Wordcount {
    /// `words.in`: lines of text.
    pub input: Topic<Bytes, String>,
    /// `words.out`: counts, keyed by word.
    pub output: Topic<String, WordCount>,
    /// The table `counts`.
    pub counts: Table<String, u64>,
}

/// Declares the word count's topics, table and agent.
pub fn build(app: &App) -> Wordcount {
    let input = app.topic::<Bytes, String>("words.in").partitions(4);
    let by_word = app.topic::<String, String>("words.by-word").partitions(4);
    let output = app.topic::<String, WordCount>("words.out").partitions(4);
    let counts = app.table::<String, u64>("counts", &by_word);

    let (out, table) = (output.clone(), counts.clone());
    app.agent("count", &input, move |lines| {
        let (by_word, out, counts) = (by_word.clone(), out.clone(), table.clone());
        async move {
            let mut words = lines
                .flat_map(|line| line.value().to_lowercase().split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .group_by(|word| word.value().clone(), &by_word);
            while let Some(word) = words.next().await {
                let count = counts.at(&word)?.update(word.value(), |n| n.unwrap_or(0) + 1).await?;
                out.send(word.value(), &WordCount { word: word.value().clone(), count }).await?;
            }
            Ok(())
        }
    });
    Wordcount { input, output, counts }
}
