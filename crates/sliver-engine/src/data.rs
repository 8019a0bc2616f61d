//! Tokenizers, dataset readers and deterministic sampling.
//!
//! Sampling is a pure function: micro-batch `(run, epoch, replica, step, index)` always maps to
//! the same token windows, on every machine, so a validator can rebuild exactly what a miner
//! trained on from public values and the same corpus.

use std::fs;
use std::path::{Path, PathBuf};

use crate::pipeline::MicroBatch;
use crate::rng::{hash_seq, SplitMix64};
use crate::EngineError;

/// Largest corpus the reader loads into memory (bytes of text).
pub const MAX_CORPUS_BYTES: u64 = 4 << 30;

/// Turns text into token ids and back.
pub trait Tokenizer: Send + Sync {
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
    /// Encodes text.
    fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError>;
    /// Decodes ids (lossy where ids do not form valid UTF-8).
    fn decode(&self, ids: &[u32]) -> String;
}

/// The built-in byte-level tokenizer: each UTF-8 byte is a token (vocabulary 256).
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteTokenizer;

impl Tokenizer for ByteTokenizer {
    fn vocab_size(&self) -> usize {
        256
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().map(|&i| i.min(255) as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// BPE (or any) tokenizer from a Hugging Face `tokenizer.json` (feature `bpe`).
#[cfg(feature = "bpe")]
#[derive(Debug)]
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
}

#[cfg(feature = "bpe")]
impl HfTokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, EngineError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            EngineError::Data(format!("cannot load tokenizer {}: {e}", path.display()))
        })?;
        Ok(HfTokenizer { inner })
    }
}

#[cfg(feature = "bpe")]
impl Tokenizer for HfTokenizer {
    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Data(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }
    fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }
}

/// Where the text comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// One text file.
    File(PathBuf),
    /// Every `.txt` file under a directory, in sorted path order.
    Dir(PathBuf),
    /// JSON Lines with the text in the given field.
    JsonLines(PathBuf, String),
}

impl Source {
    /// Guesses the source kind of `path`: a directory, a `.jsonl` file (field `text`) or text.
    pub fn detect(path: &Path) -> Source {
        if path.is_dir() {
            Source::Dir(path.to_path_buf())
        } else if path.extension().is_some_and(|e| e == "jsonl") {
            Source::JsonLines(path.to_path_buf(), "text".into())
        } else {
            Source::File(path.to_path_buf())
        }
    }

    /// Reads the whole text (documents joined by a blank line).
    pub fn read(&self) -> Result<String, EngineError> {
        match self {
            Source::File(p) => read_text(p),
            Source::Dir(dir) => {
                let mut files = Vec::new();
                collect_txt(dir, &mut files)?;
                files.sort();
                if files.is_empty() {
                    return Err(EngineError::Data(format!(
                        "no .txt files under {}",
                        dir.display()
                    )));
                }
                let mut out = String::new();
                for f in files {
                    if !out.is_empty() {
                        out.push_str("\n\n");
                    }
                    out.push_str(&read_text(&f)?);
                    check_size(out.len() as u64, dir)?;
                }
                Ok(out)
            }
            Source::JsonLines(p, field) => {
                let raw = read_text(p)?;
                let mut out = String::new();
                for (i, line) in raw.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                        EngineError::Data(format!("{} line {}: not JSON: {e}", p.display(), i + 1))
                    })?;
                    let Some(text) = v.get(field).and_then(|t| t.as_str()) else {
                        return Err(EngineError::Data(format!(
                            "{} line {}: no string field {field:?}",
                            p.display(),
                            i + 1
                        )));
                    };
                    if !out.is_empty() {
                        out.push_str("\n\n");
                    }
                    out.push_str(text);
                }
                Ok(out)
            }
        }
    }
}

fn check_size(len: u64, p: &Path) -> Result<(), EngineError> {
    if len > MAX_CORPUS_BYTES {
        return Err(EngineError::Data(format!("{} is over {MAX_CORPUS_BYTES} bytes", p.display())));
    }
    Ok(())
}

fn read_text(p: &Path) -> Result<String, EngineError> {
    let meta = fs::metadata(p)
        .map_err(|e| EngineError::Data(format!("cannot read {}: {e}", p.display())))?;
    check_size(meta.len(), p)?;
    let bytes =
        fs::read(p).map_err(|e| EngineError::Data(format!("cannot read {}: {e}", p.display())))?;
    String::from_utf8(bytes)
        .map_err(|e| EngineError::Data(format!("{} is not UTF-8: {e}", p.display())))
}

fn collect_txt(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), EngineError> {
    let entries = fs::read_dir(dir)
        .map_err(|e| EngineError::Data(format!("cannot list {}: {e}", dir.display())))?;
    for entry in entries {
        let path = entry.map_err(|e| EngineError::Data(e.to_string()))?.path();
        if path.is_dir() {
            collect_txt(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "txt") {
            out.push(path);
        }
    }
    Ok(())
}

/// A tokenized corpus split into training and validation parts.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Training tokens (the first part).
    pub train: Vec<u32>,
    /// Validation tokens (the last part).
    pub val: Vec<u32>,
}

/// Which part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training part.
    Train,
    /// The validation part.
    Val,
}

/// Identifies one micro-batch in a training run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BatchKey {
    /// Training run id (from the chain).
    pub run: u64,
    /// Epoch.
    pub epoch: u64,
    /// Replica of the sliver group (different replicas see different data).
    pub replica: u64,
    /// Inner step.
    pub step: u64,
    /// Micro-batch index within the step.
    pub index: u64,
}

impl Dataset {
    /// Tokenizes `text` and splits it: the first `train_fraction` for training, the rest for
    /// validation (nanoGPT uses 0.9).
    pub fn from_text(
        text: &str,
        tok: &dyn Tokenizer,
        train_fraction: f64,
    ) -> Result<Self, EngineError> {
        if !(0.0..1.0).contains(&train_fraction) || train_fraction == 0.0 {
            return Err(EngineError::Data(format!(
                "train fraction {train_fraction} is outside (0, 1)"
            )));
        }
        let ids = tok.encode(text)?;
        let cut = (ids.len() as f64 * train_fraction) as usize;
        let (train, val) = ids.split_at(cut);
        Ok(Dataset { train: train.to_vec(), val: val.to_vec() })
    }

    /// Reads and tokenizes a source.
    pub fn load(
        source: &Source,
        tok: &dyn Tokenizer,
        train_fraction: f64,
    ) -> Result<Self, EngineError> {
        Self::from_text(&source.read()?, tok, train_fraction)
    }

    fn part(&self, split: Split) -> &[u32] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// Draws a micro-batch of `batch` windows of `seq + 1` tokens at positions that depend only
    /// on `key` (and the split), as nanoGPT's `get_batch` draws them at random.
    pub fn micro_batch(
        &self,
        split: Split,
        key: BatchKey,
        batch: usize,
        seq: usize,
    ) -> Result<MicroBatch, EngineError> {
        let data = self.part(split);
        if data.len() <= seq + 1 {
            return Err(EngineError::Data(format!(
                "{split:?} part has {} tokens, fewer than one window of {}",
                data.len(),
                seq + 1
            )));
        }
        let tag = match split {
            Split::Train => 0,
            Split::Val => 1,
        };
        let seed = hash_seq(&[tag, key.run, key.epoch, key.replica, key.step, key.index]);
        let mut rng = SplitMix64::new(seed);
        let span = (data.len() - seq - 1) as u64;
        let mut inputs = Vec::with_capacity(batch * seq);
        let mut targets = Vec::with_capacity(batch * seq);
        for _ in 0..batch {
            let at = rng.below(span + 1) as usize;
            inputs.extend(data[at..at + seq].iter().map(|&t| i64::from(t)));
            targets.extend(data[at + 1..at + seq + 1].iter().map(|&t| i64::from(t)));
        }
        Ok(MicroBatch { batch, seq, inputs, targets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Dataset {
        let text: String = (0..5000).map(|i| (b'a' + (i * 7 % 26) as u8) as char).collect();
        Dataset::from_text(&text, &ByteTokenizer, 0.9).unwrap()
    }

    #[test]
    fn split_is_ninety_ten() {
        let d = corpus();
        assert_eq!(d.train.len(), 4500);
        assert_eq!(d.val.len(), 500);
    }

    #[test]
    fn sampling_is_a_pure_function_of_the_key() {
        let d = corpus();
        let key = BatchKey { run: 1, epoch: 2, replica: 0, step: 5, index: 3 };
        let a = d.micro_batch(Split::Train, key, 4, 16).unwrap();
        let b = d.clone().micro_batch(Split::Train, key, 4, 16).unwrap();
        assert_eq!(a, b);
        let other = d.micro_batch(Split::Train, BatchKey { replica: 1, ..key }, 4, 16).unwrap();
        assert_ne!(a, other);
        assert_eq!(&a.inputs[1..16], &a.targets[..15]);
        // Pinned: a change would break validators' replay of older work.
        assert_eq!(a.inputs[..4], PINNED_FIRST_TOKENS);
    }

    const PINNED_FIRST_TOKENS: [i64; 4] = [113, 120, 101, 108];

    #[cfg(feature = "bpe")]
    #[test]
    fn bpe_from_a_tokenizer_json() {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
            "decoder":null,"model":{"type":"BPE","dropout":null,"unk_token":"[UNK]",
            "continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,
            "byte_fallback":false,"vocab":{"[UNK]":0,"a":1,"b":2,"ab":3,"c":4},"merges":["a b"]}}"#;
        let path = std::env::temp_dir().join(format!("sliver-bpe-{}.json", std::process::id()));
        fs::write(&path, json).unwrap();
        let tok = HfTokenizer::from_file(&path).unwrap();
        assert_eq!(tok.vocab_size(), 5);
        assert_eq!(tok.encode("ab c abab").unwrap(), vec![3, 4, 3, 3]);
        let d = Dataset::from_text(&"ab c ".repeat(100), &tok, 0.9).unwrap();
        assert!(d.train.iter().all(|&t| t == 3 || t == 4));
        fs::write(&path, "{").unwrap();
        assert!(HfTokenizer::from_file(&path)
            .unwrap_err()
            .to_string()
            .contains("cannot load tokenizer"));
        fs::remove_file(path).unwrap();
    }

    #[test]
    fn readers_and_their_errors() {
        let dir = std::env::temp_dir().join(format!("sliver-data-{}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("b.txt"), "second").unwrap();
        fs::write(dir.join("sub/a.txt"), "nested").unwrap();
        fs::write(dir.join("c.md"), "ignored").unwrap();
        assert_eq!(Source::Dir(dir.clone()).read().unwrap(), "second\n\nnested");
        let jl = dir.join("d.jsonl");
        fs::write(&jl, "{\"text\": \"one\"}\n\n{\"text\": \"two\", \"id\": 2}\n").unwrap();
        assert_eq!(Source::detect(&jl).read().unwrap(), "one\n\ntwo");
        fs::write(&jl, "{\"body\": \"one\"}\n").unwrap();
        let err = Source::detect(&jl).read().unwrap_err().to_string();
        assert!(err.contains("no string field \"text\""), "{err}");
        fs::write(&jl, "not json\n").unwrap();
        assert!(Source::detect(&jl).read().unwrap_err().to_string().contains("not JSON"));
        let missing = Source::File(dir.join("missing.txt")).read().unwrap_err().to_string();
        assert!(missing.contains("cannot read"), "{missing}");
        let tiny = Dataset::from_text("abc", &ByteTokenizer, 0.5).unwrap();
        let key = BatchKey { run: 0, epoch: 0, replica: 0, step: 0, index: 0 };
        assert!(tiny.micro_batch(Split::Train, key, 1, 8).is_err());
        fs::remove_dir_all(dir).unwrap();
    }
}
